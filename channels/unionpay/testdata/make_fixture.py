"""Writes 802310048993424_20150905.zip the way UnionPay's file transfer packs a day (before the
zlib + Base64 layers of fileContent): the ZM entry INN15090588ZM_802310048993424 in fixed-width
GBK lines (41 fields one space apart, 607 bytes, CRLF; field 1 of sample line 1 from the official
sample), an empty ZME entry and the RD summary report. Run: python3 make_fixture.py"""
import struct, zlib

W = [3,11,11,6,10,19,12,4,2,21,2,32,2,6,10,13,13,4,15,2,2,6,2,4,32,1,21,15,1,15,32,13,13,8,32,13,13,12,2,1,131]

def line(f):
    vals = []
    for i, w in enumerate(W, 1):
        v = f.get(i, "").encode("gbk")
        assert len(v) <= w
        vals.append(v + b" " * (w - len(v)))
    out = b" ".join(vals)
    assert len(out) == 607
    return out

common = {1: "S56", 2: "88022900", 3: "00049993", 8: "4899", 9: "07", 11: "01", 13: "01", 18: "0001",
          22: "000201", 28: "802310048993424", 34: "01080209", 40: "7"}
rows = [
    ({**common, **{4: "190624", 5: "0906112203", 6: "622609******0048", 7: "000000476800", 10: "201509061122031906248",
                    12: "10078087", 16: "D000000002861", 17: "C000000473939", 20: "01", 21: "01", 31: "测试二级商户", 33: "C000000473939"}}),
    ({**common, **{4: "190625", 5: "0906120000", 6: "622609******0049", 7: "000000000100", 10: "201509061200001906255",
                    12: "10078088", 16: "D000000000001", 17: "C000000000099", 20: "01", 21: "01", 33: "C000000000099"}}),
    ({**common, **{4: "190700", 5: "0907093000", 6: "622609******0048", 7: "000000001000", 10: "201509070930001907000",
                    12: "R10078087", 16: "C000000000006", 17: "D000000000994", 20: "04", 21: "00", 27: "201509061122031906248",
                    33: "D000000000994", 35: "10078087"}}),
    ({**common, **{4: "190701", 5: "0907100000", 6: "622609******0050", 7: "000000002000", 10: "201509071000001907001",
                    12: "10078090", 20: "31", 21: "00", 27: "201509071000001907000"}}),
]
zm = b"".join(line(r) + b"\r\n" for r in rows)
rd = "全渠道商户交易汇总表\r\n清算日期：20150905\r\n自助消费 2 笔 贷 4769.00\r\n退货 1 笔 借 10.00\r\n".encode("gbk")
files = [("INN15090588ZM_802310048993424", zm), ("INN15090588ZME_802310048993424", b""), ("RD201015090501_802310048993424", rd)]
out, central = b"", b""
for name, data in files:
    n = name.encode()
    c = zlib.compressobj(6, zlib.DEFLATED, -15); comp = c.compress(data) + c.flush()
    common_h = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x4725, zlib.crc32(data), len(comp), len(data), len(n), 0)
    off = len(out)
    out += b"PK\x03\x04" + common_h + n + comp
    central += b"PK\x01\x02" + struct.pack("<H", 20) + common_h + struct.pack("<HHHII", 0, 0, 0, 0, off) + n
out += central + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(files), len(files), len(central), len(out), 0)
open("802310048993424_20150905.zip", "wb").write(out)
