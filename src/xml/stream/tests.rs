use super::*;

const LIMITS: Limits = Limits {
    max_depth: 8,
    max_elements: usize::MAX,
    max_field_bytes: 64,
    max_run_bytes: 1024,
    max_document_bytes: 1 << 20,
};

/// Every event as text: `+path`, `-path`, `"text"`, attributes after a
/// start as `@name=value`.
fn events(bytes: &[u8], choice: EncodingChoice) -> Result<Vec<String>, XmlError> {
    events_with(bytes, choice, LIMITS)
}

fn events_with(
    bytes: &[u8],
    choice: EncodingChoice,
    limits: Limits,
) -> Result<Vec<String>, XmlError> {
    let mut stream = XmlStream::new(bytes, choice, limits)?;
    let mut out = Vec::new();
    loop {
        match stream.next_event()? {
            XmlEvent::Start => {
                out.push(format!("+{}", stream.path()));
                for (name, value) in stream.attributes() {
                    out.push(format!("@{name}={value}"));
                }
            }
            XmlEvent::End => out.push(format!("-{}", stream.name())),
            XmlEvent::Text if stream.text().trim().is_empty() => {}
            XmlEvent::Text => out.push(format!("\"{}\"", stream.text())),
            XmlEvent::Eof => return Ok(out),
        }
    }
}

fn error(bytes: &[u8]) -> XmlError {
    match events(bytes, EncodingChoice::Auto) {
        Ok(events) => panic!("read: {events:?}"),
        Err(e) => e,
    }
}

fn cp1251(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1251.encode(text);
    assert!(!unmappable);
    bytes.into_owned()
}

#[test]
fn elements_attributes_and_text_are_read_with_local_names() {
    let doc = br#"<?xml version="1.0"?>
<s:Export xmlns:s="urn:x" xmlns="urn:y"><Client s:Code="7" Kind="a &amp; b"><Name>A&lt;B<![CDATA[ & c]]></Name><Empty/></Client></s:Export>"#;
    assert_eq!(
        events(doc, EncodingChoice::Auto).expect("reads"),
        [
            "+/Export",
            "+/Export/Client",
            "@Code=7",
            "@Kind=a & b",
            "+/Export/Client/Name",
            "\"A\"",
            "\"<\"",
            "\"B\"",
            "\" & c\"",
            "-Name",
            "+/Export/Client/Empty",
            "-Empty",
            "-Client",
            "-Export",
        ]
    );
}

#[test]
fn windows_1251_from_the_declaration_or_given() {
    let mut doc = cp1251(
        r#"<?xml version="1.0" encoding="windows-1251"?><Клиенты><Имя Вид="ЮЛ">Ромашка</Имя></Клиенты>"#,
    );
    let read = events(&doc, EncodingChoice::Auto).expect("reads");
    assert_eq!(
        read,
        [
            "+/Клиенты",
            "+/Клиенты/Имя",
            "@Вид=ЮЛ",
            "\"Ромашка\"",
            "-Имя",
            "-Клиенты"
        ]
    );
    // Without a declaration only the caller can say.
    doc = cp1251("<Клиенты><Имя>Ромашка</Имя></Клиенты>");
    let e = error(&doc);
    assert_eq!(e.kind, XmlErrorKind::BadBytes("UTF-8"));
    assert_eq!(e.line, 1);
    let given = EncodingChoice::Given(Encoding::Windows1251);
    assert_eq!(events(&doc, given).expect("reads").len(), 5);
    // The caller's choice wins over a declaration.
    let mut declared = b"<?xml version=\"1.0\" encoding=\"utf-8\"?>".to_vec();
    declared.extend_from_slice(&doc);
    assert_eq!(events(&declared, given).expect("reads").len(), 5);
}

#[test]
fn utf8_with_or_without_bom() {
    let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><a>Ж</a>";
    assert_eq!(
        events(doc.as_bytes(), EncodingChoice::Auto).expect("reads"),
        ["+/a", "\"Ж\"", "-a"]
    );
    let bom = format!("\u{FEFF}{doc}");
    assert_eq!(
        events(bom.as_bytes(), EncodingChoice::Auto).expect("reads"),
        ["+/a", "\"Ж\"", "-a"]
    );
    let bom = "\u{FEFF}<a>Ж</a>";
    assert_eq!(
        events(bom.as_bytes(), EncodingChoice::Auto)
            .expect("reads")
            .len(),
        3
    );
    // A BOM that contradicts the declaration.
    let bad = "\u{FEFF}<?xml version=\"1.0\" encoding=\"windows-1251\"?><a/>";
    assert!(matches!(
        error(bad.as_bytes()).kind,
        XmlErrorKind::UnsupportedEncoding(_)
    ));
}

#[test]
fn other_encodings_are_refused_by_name() {
    let e = error(b"<?xml version=\"1.0\" encoding=\"KOI8-R\"?><a/>");
    assert_eq!(e.kind, XmlErrorKind::UnsupportedEncoding("KOI8-R".into()));
    assert_eq!(
        e.kind.to_string(),
        "encoding 'KOI8-R' is not supported: only UTF-8 and windows-1251 are"
    );
    let utf16: Vec<u8> = "<?xml version=\"1.0\"?><a/>"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert_eq!(
        error(&utf16).kind,
        XmlErrorKind::UnsupportedEncoding("UTF-16LE".into())
    );
    let mut bom16 = vec![0xFE, 0xFF];
    bom16.extend("<a/>".encode_utf16().flat_map(u16::to_be_bytes));
    assert_eq!(
        error(&bom16).kind,
        XmlErrorKind::UnsupportedEncoding("UTF-16BE".into())
    );
}

#[test]
fn doctype_and_entities_are_refused() {
    let e = error(b"<?xml version=\"1.0\"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n<a>&x;</a>");
    assert_eq!((e.line, e.kind), (2, XmlErrorKind::DocType));
    let e = error(b"<a>\n<b>&x;</b></a>");
    assert_eq!(e.line, 2);
    assert_eq!(e.path, "/a/b");
    assert!(matches!(e.kind, XmlErrorKind::Reference(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "line 2, /a/b: unknown entity '&x;': only &amp; &lt; &gt; &quot; &apos; and character references are accepted"
    );
    assert!(matches!(
        error(b"<a b=\"&x;\"/>").kind,
        XmlErrorKind::Reference(_)
    ));
    assert!(matches!(
        error(b"<a>&#1;</a>").kind,
        XmlErrorKind::Reference(_)
    ));
}

#[test]
fn malformed_and_truncated_documents_are_refused_with_their_line() {
    let e = error(b"<a>\n<b></c></a>");
    assert!(matches!(e.kind, XmlErrorKind::Malformed(_)), "{e}");
    assert_eq!(e.line, 2);
    assert_eq!(error(b"<a><b>x</b>").kind, XmlErrorKind::Truncated);
    assert_eq!(error(b"  ").kind, XmlErrorKind::NoRoot);
    assert_eq!(error(b"<a/><b/>").kind, XmlErrorKind::ContentOutsideRoot);
    assert_eq!(error(b"<a/>text").kind, XmlErrorKind::ContentOutsideRoot);
    assert!(matches!(
        error(b"<a>1 & 2</a>").kind,
        XmlErrorKind::Malformed(_)
    ));
    assert!(matches!(
        error(b"<a x=\"1\" x=\"2\"/>").kind,
        XmlErrorKind::Malformed(_)
    ));
    // Every prefix of a good document is refused, never a panic.
    let doc = b"<?xml version=\"1.0\"?><a x=\"1\"><b>text &amp; more</b><c/></a>";
    for cut in 0..doc.len() {
        assert!(events(&doc[..cut], EncodingChoice::Auto).is_err(), "{cut}");
    }
    assert!(events(doc, EncodingChoice::Auto).is_ok());
}

#[test]
fn depth_is_bounded() {
    let deep = format!("{}{}", "<a>".repeat(9), "</a>".repeat(9));
    let e = error(deep.as_bytes());
    assert_eq!(e.kind, XmlErrorKind::Limit(LimitError::TooDeep(8)));
    let ok = format!("{}{}", "<a>".repeat(8), "</a>".repeat(8));
    assert!(events(ok.as_bytes(), EncodingChoice::Auto).is_ok());
}

#[test]
fn runs_of_text_and_tags_are_bounded_without_being_held() {
    // A run of text far longer than the bound: refused once the bound plus
    // one read buffer is held.
    let long = format!("<a>{}</a>", "x".repeat(10 * READ_CHUNK));
    assert_eq!(error(long.as_bytes()).kind, XmlErrorKind::RunTooLong(1024));
    let tag = format!("<a b=\"{}\"/>", "<".repeat(10 * READ_CHUNK));
    assert_eq!(error(tag.as_bytes()).kind, XmlErrorKind::RunTooLong(1024));
    let comment = format!("<a><!--{}--></a>", "-<>".repeat(READ_CHUNK));
    assert_eq!(
        error(comment.as_bytes()).kind,
        XmlErrorKind::RunTooLong(1024)
    );
    // Many short runs add up to far more than the bound and are fine.
    let many = format!("<a>{}</a>", "<b>xx</b>".repeat(10_000));
    assert!(events(many.as_bytes(), EncodingChoice::Auto).is_ok());
}

#[test]
fn the_document_size_is_bounded() {
    let limits = Limits {
        max_document_bytes: 100,
        ..LIMITS
    };
    let big = format!("<a>{}</a>", "<b/>".repeat(100));
    let e = events_with(big.as_bytes(), EncodingChoice::Auto, limits).expect_err("too big");
    assert_eq!(e.kind, XmlErrorKind::TooLarge(100));
}

#[test]
fn lines_are_counted() {
    let doc = b"<a>\n  <b>\n    x\n  </b>\n  <c\n   d=\"1\"/>\n</a>\n";
    let mut stream = XmlStream::new(&doc[..], EncodingChoice::Auto, LIMITS).expect("starts");
    let mut starts = Vec::new();
    loop {
        match stream.next_event().expect("reads") {
            XmlEvent::Start => starts.push((stream.name().to_owned(), stream.line())),
            XmlEvent::Eof => break,
            _ => {}
        }
    }
    assert_eq!(
        starts,
        [
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("c".to_owned(), 5)
        ]
    );
}

#[test]
fn an_error_has_the_column_its_event_started_at() {
    let doc = "<a>\n  <b>x</c>\n</a>".as_bytes();
    let mut stream = XmlStream::new(doc, EncodingChoice::Auto, LIMITS).expect("starts");
    let error = loop {
        match stream.next_event() {
            Ok(XmlEvent::Eof) => panic!("read"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(
        (error.line, stream.line(), stream.column()),
        (2, 2, 7),
        "{error}"
    );
}
