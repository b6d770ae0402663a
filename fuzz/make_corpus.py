#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed_*)
from the gateway's real examples: the PBX documentation's SayName and
IncomingCall envelopes (as in tests/soap.rs), the demo directory
(data/demo/counterparties.jsonl), the push API examples of docs/1c-push.md
and the OData answers 1C sends (as in src/sources/onec/rows.rs's tests and
docs/external-systems.md), and their dictionaries (fuzz/dict/*.dict). Run
from anywhere. These folders are only read by fuzz/run.sh: what libFuzzer
finds goes to fuzz/work/<target>/, not here."""

import json
import pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"

# The PBX documentation's two requests, byte for byte (seed 002).
SEED_SAY_NAME = f"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="{SOAP11}">
    <soap:Body>
        <SayName xmlns="http://VATS">
            <Number>89235292926</Number>
        </SayName>
    </soap:Body>
</soap:Envelope>
"""
SEED_INCOMING_CALL = f"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="{SOAP11}">
    <soap:Body>
        <IncomingCall xmlns="http://VATS">
            <NumFrom>89235292926</NumFrom>
            <Key>gW3cyUJAtl50PhF</Key>
        </IncomingCall>
    </soap:Body>
</soap:Envelope>
"""

SOAP = [
    SEED_SAY_NAME,
    SEED_INCOMING_CALL,
    # The older PBX: namespace http://test, lower-case names, spaces in the number.
    f'<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="{SOAP11}"><soapenv:Body>'
    '<sayname xmlns="http://test"><number>+7 923 529 29 26</number></sayname>'
    "</soapenv:Body></soapenv:Envelope>",
    # SOAP 1.2, prefixed operation.
    f'<env:Envelope xmlns:env="{SOAP12}"><env:Body><v:SayName xmlns:v="http://VATS">'
    "<v:Number>89235292926</v:Number></v:SayName></env:Body></env:Envelope>",
    # Header, comment, PI, CDATA, references, empty element.
    f'<?xml version="1.0"?><!-- c --><s:Envelope xmlns:s="{SOAP11}"><s:Header><a:Id xmlns:a="urn:x">1</a:Id>'
    '</s:Header><s:Body><IncomingCall xmlns="http://V&amp;ATS"><NumFrom> <![CDATA[+7 (923)]]> 529&#x2D;29&#45;26 </NumFrom>'
    "<?pi x?><Key>gW3c&lt;&gt;&quot;&apos;</Key><Extra/></IncomingCall></s:Body></s:Envelope>",
    # Refusals: DOCTYPE, mismatched end, unknown operation, missing field.
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><SayName><Number>&xxe;</Number></SayName></soap:Body></soap:Envelope>',
    f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><SayName><Number>1</Numbr></SayName></soap:Body></soap:Envelope>',
    f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><HangUp xmlns="http://VATS"/></soap:Body></soap:Envelope>',
    f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><SayName xmlns="http://VATS"/></soap:Body></soap:Envelope>',
]

PHONES = [
    "89235292926", "+79235292926", "79235292926", "9235292926",
    "+7 (923) 529-29-26", "8 (495) 123-45-67", "7(923)5292926",
    "+7 495 123-45-67 доб. 12", "тел. 8-916-555-55-55", "tel:+7.916.555.55.55",
    "244", "044", "1", "", "+44 20 7946 0958", "123456789012345",
    "1234567890123456", "8\u00a0916\u2011555\u201255\u201355", "84951234567, 89161234567",
]

DEMO = (ROOT / "data/demo/counterparties.jsonl").read_text(encoding="utf-8")
DEMO_LINES = [line for line in DEMO.splitlines() if line.strip()]

PUSH = [
    # docs/1c-push.md's curl example.
    '[{"id":"9a1b2c3d-0000-4000-8000-000000000001","name":"ООО \\"Северный ветер\\"","inn":"7705123456",'
    '"kpp":"770501001","category":1,"manager_phone":"245","phones":["+7 (912) 345-67-89","84957771122"],'
    '"emails":["info@veter.ru"]}]',
    # docs/1c-push.md's refusals.
    '[{"id":"a","name":"A"},{"id":"b","phones":[]}]',
    '[{"id":"a","name":"A","category":"VIP"}]',
    '[{"id":"a","name":"A","phone":"1"}]',
    '[{"id":"a","name":"A"},\n{"id":"b" "name":"B"}]',
    "[]",
    "{}",
    # The demo directory as one push, with 1C's byte order mark, and pretty-printed.
    "\ufeff[" + ",".join(DEMO_LINES[:5]) + "]",
    json.dumps([json.loads(line) for line in DEMO_LINES[5:8]], ensure_ascii=False, indent=2),
]

JSONL = [
    DEMO,
    "\ufeff" + "\r\n".join(DEMO_LINES[:3]) + "\r\n\r\n",
    *DEMO_LINES[:6],
    '{"id":"1","name":""}',
    '{"id":"1","name":"A"}\n{"id":"1","name":"B"}\n',
    '{"id":"1","name":"A","unknown":1}',
]

CATALOG_PAGE = """{"odata.metadata":"http://1c/base/odata/standard.odata/$metadata#Catalog_Контрагенты","value":[
  {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000001","DataVersion":"AAAAAgAAAAA=","DeletionMark":false,
   "IsFolder":false,"Parent_Key":"00000000-0000-0000-0000-000000000000","Code":"000000001",
   "Description":"Ромашка","НаименованиеПолное":"ООО \\"Ромашка\\"","ИНН":"7701234567","КПП":"770101001",
   "КатегорияКлиента":"2","ДобавочныйМенеджера":244,"Predefined":false,"PredefinedDataName":"",
   "ДополнительныеРеквизиты":[],"ДополнительныеРеквизиты@navigationLinkUrl":"Catalog_Контрагенты(guid'…')/ДополнительныеРеквизиты",
   "КонтактнаяИнформация":[
     {"LineNumber":"2","Тип":"АдресЭлектроннойПочты","Вид_Key":"x","Представление":"a@b.ru","НомерТелефона":"","АдресЭП":"a@b.ru"},
     {"LineNumber":"1","Тип":"Телефон","Вид_Key":"y","Представление":"+7 (925) 045-23-43","НомерТелефона":"79250452343","АдресЭП":""},
     {"LineNumber":"3","Тип":"Телефон","Вид_Key":"y","Представление":"8 495 123-45-67","НомерТелефона":"","АдресЭП":""},
     {"LineNumber":"4","Тип":"Адрес","Вид_Key":"z","Представление":"101000, Москва","НомерТелефона":"","АдресЭП":""}
   ]},
  {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000002","IsFolder":true,"Description":"Покупатели"},
  {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000003","DeletionMark":true,"Description":"Удалённый"},
  {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000004","DeletionMark":"false","IsFolder":null,"Description":"",
   "НаименованиеПолное":"ИП Иванов","КатегорияКлиента":1.0,"ДобавочныйМенеджера":null,"КонтактнаяИнформация":null}
]}"""

CONTACTS_PAGE = """{"odata.metadata":"http://1c/base/odata/standard.odata/$metadata#Catalog_Контрагенты_КонтактнаяИнформация","value":[
  {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000001","LineNumber":"1","Тип":"Телефон","Вид_Key":"00000000-0000-0000-0000-000000000000","Представление":"нет","НомерТелефона":"9161234567","АдресЭП":""},
  {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000004","LineNumber":2,"Тип":"Телефон","Представление":"+7 916 000-00-02","НомерТелефона":null},
  {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000004","LineNumber":"3","Тип":"АдресЭлектроннойПочты","Представление":"ivanov@example.ru","АдресЭП":""}
]}"""

ODATA = [
    CATALOG_PAGE,
    CONTACTS_PAGE,
    '{"value":[]}',
    '{"odata.error":{"code":"-1","message":{"lang":"ru","value":"Ошибка"}}}',
    "{}",
    '{"value":[1]}',
]

# Dictionaries (libFuzzer's -dict=): tokens the parsers branch on.
XML_DICT = [
    "<?xml", "?>", "<!--", "-->", "<![CDATA[", "]]>", "<!DOCTYPE", "<!ENTITY", "</", "/>",
    "xmlns", "xmlns:soap=", "xmlns:env=", SOAP11, SOAP12, "http://VATS", "http://test",
    "Envelope", "Header", "Body", "SayName", "IncomingCall", "Number", "NumFrom", "Key",
    "&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#", "&#x", ";", "encoding=", "version=",
]
COUNTERPARTY_FIELDS = [
    "id", "name", "full_name", "inn", "kpp", "ogrn", "category", "manager_phone",
    "manager_name", "phones", "emails", "address", "data_version",
]
JSON_DICT = [
    "{", "}", "[", "]", ",", ":", "null", "true", "false", "\\u", "\\ud800", "\\\\", "\\\"",
    "1e999", "-0", "9223372036854775808", "\ufeff",
    *[f'"{f}":' for f in COUNTERPARTY_FIELDS],
]
ODATA_DICT = [
    "{", "}", "[", "]", ",", ":", "null", "true", "false", "\\u", "1.0", "1e15", "-1",
    *[f'"{f}":' for f in [
        "value", "odata.metadata", "Ref_Key", "DataVersion", "DeletionMark", "IsFolder",
        "Description", "НаименованиеПолное", "ИНН", "КПП", "КатегорияКлиента",
        "ДобавочныйМенеджера", "КонтактнаяИнформация", "LineNumber", "Тип", "Представление",
        "НомерТелефона", "АдресЭП",
    ]],
    '"Телефон"', '"АдресЭлектроннойПочты"', '"Адрес"',
]
PHONE_DICT = ["+7", "8", "(", ")", "-", " ", ".", "\u00a0", "\u2010", "\u2015", "доб.", "тел.", ",", "ext"]


def write_corpus(target, items):
    folder = FUZZ / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed_*"):
        old.unlink()
    for i, item in enumerate(items):
        (folder / f"seed_{i:02}").write_bytes(item.encode("utf-8"))


def write_dict(name, tokens):
    folder = FUZZ / "dict"
    folder.mkdir(exist_ok=True)
    # libFuzzer's dictionary syntax: "..." with \\, \" and \xNN escapes.
    def esc(token):
        out = []
        for b in token.encode("utf-8"):
            if b in (0x5C, 0x22) or b < 0x20 or b >= 0x7F:
                out.append(f"\\x{b:02X}")
            else:
                out.append(chr(b))
        return "".join(out)
    lines = [f'"{esc(t)}"' for t in dict.fromkeys(tokens)]
    (folder / f"{name}.dict").write_text("\n".join(lines) + "\n")


write_corpus("soap_envelope", SOAP)
write_corpus("phone", PHONES)
write_corpus("push_body", PUSH)
write_corpus("jsonl", JSONL)
write_corpus("odata_page", ODATA)
# SERVIO-like export files: the marked samples of tests/data/servio, as bytes
# (one is windows-1251).
SERVIO_SAMPLES = sorted((ROOT / "tests/data/servio").glob("*.xml"))
servio_folder = FUZZ / "corpus" / "servio_file"
servio_folder.mkdir(parents=True, exist_ok=True)
for i, path in enumerate(SERVIO_SAMPLES):
    (servio_folder / f"seed_{i:03}").write_bytes(path.read_bytes())
write_dict("xml", XML_DICT)
write_dict("json", JSON_DICT)
write_dict("odata", ODATA_DICT)
write_dict("phone", PHONE_DICT)
