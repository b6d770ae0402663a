//! The operator page at `/operator`: one static HTML file with its script
//! and styles inline, compiled into the binary (no build step, no files to
//! deploy). It takes the screen's token from the URL fragment
//! (`/operator#token=T`, never sent to the server) or asks once, connects to
//! `/operator/ws`, reconnects with `after` on a drop, and shows each card.
//! Sequence numbers are compared within one connection only, so the cards a
//! restarted gateway sends (numbered from 1 again) are shown too.

/// The page, as served.
pub const OPERATOR_PAGE: &str = include_str!("../../assets/operator.html");

/// Headers that keep the page self-contained: it may talk only to this
/// origin, send no referrer (the URL fragment holds a token), and is not
/// cached (an upgrade of the gateway ships a new page).
pub const PAGE_HEADERS: [(&str, &str); 5] = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
];
