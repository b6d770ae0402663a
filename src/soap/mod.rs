//! SOAP for the PBX: reading request envelopes, writing answers and faults,
//! and the WSDL. It reads XML through [`crate::xml`]'s rules (and quick-xml's
//! namespace reader); it has no HTTP and no business logic.
//!
//! - [`parse_request`] reads a `SayName` or `IncomingCall` envelope (SOAP 1.1
//!   or 1.2) into a [`Request`], streaming with quick-xml: no DOM, no DTDs,
//!   every input bounded.
//! - [`say_name_payload`] renders a counterparty's `<data>` document once, at
//!   load time, already escaped for `m:return`; [`write_say_name_response`]
//!   then only copies bytes on the ring-time path.
//! - [`write_fault`] answers in the caller's SOAP version.
//! - [`wsdl`] serves `wsdl/vats.wsdl` with this gateway's address in it.

mod request;
mod response;
mod shape;
mod wsdl;

pub use request::{parse_request, Operation, Request, RequestError};
pub use response::{
    say_name_payload, unknown_caller_payload, write_fault, write_incoming_call_response,
    write_say_name_response, write_say_name_response_with_manager,
    write_say_name_response_with_manager_of, SayNameFrame,
};
pub use shape::{RequestReader, Shaped};
pub use wsdl::wsdl;

const SOAP11_ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SOAP12_ENVELOPE_NS: &str = "http://www.w3.org/2003/05/soap-envelope";

/// The answer's namespace when the request's operation had none: the one the
/// current PBX uses.
const DEFAULT_SERVICE_NS: &str = "http://VATS";

/// Which SOAP a request spoke; the answer and its faults speak the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    V11,
    V12,
}

impl SoapVersion {
    /// The SOAP version a `Content-Type` header announces, parameters
    /// (`charset`, SOAP 1.2's `action`) ignored. `application/xml` is taken as
    /// SOAP 1.1, the version the PBX speaks. `None` for anything else.
    ///
    /// Read on bytes: it runs twice for every request the PBX sends, and
    /// `str::split` with `trim` cost about 500 instructions a call
    /// (callgrind); a header value is ASCII, so ASCII trimming is the same.
    pub fn from_content_type(ct: &str) -> Option<SoapVersion> {
        // What the PBX (`text/xml`, seed 002) and most SOAP 1.1 clients
        // send: a comparison or two.
        if ct == "text/xml" || ct == "text/xml; charset=utf-8" {
            return Some(SoapVersion::V11);
        }
        let ct = ct.as_bytes();
        let media_type = match ct.iter().position(|&b| b == b';') {
            Some(end) => &ct[..end],
            None => ct,
        }
        .trim_ascii();
        if media_type.eq_ignore_ascii_case(b"text/xml")
            || media_type.eq_ignore_ascii_case(b"application/xml")
        {
            Some(SoapVersion::V11)
        } else if media_type.eq_ignore_ascii_case(b"application/soap+xml") {
            Some(SoapVersion::V12)
        } else {
            None
        }
    }

    /// The `Content-Type` of an answer in this version.
    pub fn content_type(self) -> &'static str {
        match self {
            SoapVersion::V11 => "text/xml; charset=utf-8",
            SoapVersion::V12 => "application/soap+xml; charset=utf-8",
        }
    }

    fn envelope_namespace(self) -> &'static str {
        match self {
            SoapVersion::V11 => SOAP11_ENVELOPE_NS,
            SoapVersion::V12 => SOAP12_ENVELOPE_NS,
        }
    }
}

/// Whose fault it is: SOAP 1.1 `soap:Client` / `soap:Server`, SOAP 1.2
/// `env:Sender` / `env:Receiver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    /// The request was wrong; sending it again will not help.
    Client,
    /// The gateway failed; the same request may succeed later.
    Server,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_picks_the_version_and_ignores_parameters_and_case() {
        let cases = [
            ("text/xml", Some(SoapVersion::V11)),
            ("text/xml; charset=utf-8", Some(SoapVersion::V11)),
            ("Text/XML;charset=UTF-8", Some(SoapVersion::V11)),
            ("application/xml", Some(SoapVersion::V11)),
            ("application/soap+xml", Some(SoapVersion::V12)),
            (
                r#"application/soap+xml; charset=utf-8; action="http://VATS#SayName""#,
                Some(SoapVersion::V12),
            ),
            (
                "  APPLICATION/SOAP+XML ; charset=utf-8",
                Some(SoapVersion::V12),
            ),
            ("application/json", None),
            ("text/xmlx", None),
            ("", None),
        ];
        for (ct, expected) in cases {
            assert_eq!(SoapVersion::from_content_type(ct), expected, "{ct:?}");
        }
    }

    #[test]
    fn content_type_of_an_answer_round_trips() {
        for v in [SoapVersion::V11, SoapVersion::V12] {
            assert_eq!(SoapVersion::from_content_type(v.content_type()), Some(v));
        }
    }
}
