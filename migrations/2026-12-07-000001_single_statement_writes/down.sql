DROP FUNCTION payd_require(boolean, text);
