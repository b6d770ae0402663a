//! The WSDL served at `?wsdl`: `wsdl/vats.wsdl` with this gateway's address.

/// The file as shipped; its port addresses are [`PLACEHOLDER_LOCATION`], a
/// real URL so that the file also loads in SOAP tools as it is.
const TEMPLATE: &str = include_str!("../../wsdl/vats.wsdl");

const PLACEHOLDER_LOCATION: &str = "location=\"http://localhost:8080/telephony/ws/VATS\"";

/// The WSDL with every port's address set to `service_url`.
pub fn wsdl(service_url: &str) -> String {
    let mut location = String::with_capacity(service_url.len() + 16);
    location.push_str("location=\"");
    for c in service_url.chars() {
        match c {
            '&' => location.push_str("&amp;"),
            '<' => location.push_str("&lt;"),
            '>' => location.push_str("&gt;"),
            '"' => location.push_str("&quot;"),
            // A URL has no business holding controls; dropping them keeps
            // the document well-formed whatever the configuration says.
            c if c.is_control() => {}
            c => location.push(c),
        }
    }
    location.push('"');
    TEMPLATE.replace(PLACEHOLDER_LOCATION, &location)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event;
    use quick_xml::Reader;

    /// Every `location` attribute in the document, unescaped; panics unless
    /// the document is well-formed.
    fn locations(doc: &str) -> Vec<String> {
        let mut reader = Reader::from_str(doc);
        reader.config_mut().check_end_names = true;
        let mut found = Vec::new();
        loop {
            match reader.read_event() {
                Ok(Event::Start(e) | Event::Empty(e)) => {
                    for a in e.attributes() {
                        let a = a.expect("well-formed attribute");
                        if a.key.as_ref() == b"location" {
                            // (`unescape_value` is gone with quick-xml's `encoding` feature.)
                            let v = a
                                .decode_and_unescape_value(reader.decoder())
                                .expect("escaped correctly");
                            found.push(v.into_owned());
                        }
                    }
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("WSDL is not well-formed: {e}"),
            }
        }
        found
    }

    #[test]
    fn template_has_a_placeholder_for_each_port() {
        assert_eq!(TEMPLATE.matches(PLACEHOLDER_LOCATION).count(), 2);
        assert_eq!(locations(TEMPLATE).len(), 2);
    }

    #[test]
    fn every_port_gets_the_service_url() {
        let url = "https://pbx.example.ru:8443/telephony/ws/VATS";
        let doc = wsdl(url);
        assert_eq!(locations(&doc), vec![url, url]);
        assert!(!doc.contains("localhost"));
    }

    #[test]
    fn service_url_is_attribute_escaped() {
        let url = "http://h/ws?a=1&b=\"<2>\"";
        assert_eq!(locations(&wsdl(url)), vec![url, url]);
    }

    #[test]
    fn wsdl_describes_both_operations_in_the_vats_namespace() {
        let doc = wsdl("http://h/ws");
        for needle in [
            r#"targetNamespace="http://VATS""#,
            r#"elementFormDefault="qualified""#,
            r#"<xs:element name="SayName">"#,
            r#"<xs:element name="Number" type="xs:string"/>"#,
            r#"<xs:element name="IncomingCall">"#,
            r#"<xs:element name="NumFrom" type="xs:string"/>"#,
            r#"<xs:element name="Key" type="xs:string"/>"#,
            r#"<xs:element name="return" type="xs:string"/>"#,
            r#"<wsdl:service name="VATS">"#,
        ] {
            assert!(doc.contains(needle), "missing {needle}");
        }
    }
}
