DROP FUNCTION payd_mint_fence();
DROP FUNCTION payd_require(boolean, text);
