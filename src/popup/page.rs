//! The operator page at `/operator`: one static HTML file with its script
//! and its styles in two files of their own, all three compiled into the
//! binary (no build step, no files to deploy). It takes the screen's token
//! from the URL fragment (`/operator#token=T`, never sent to the server) or
//! asks once, connects to `/operator/ws`, reconnects with `after` on a drop,
//! and shows each card. Sequence numbers are compared within one connection
//! only, so the cards a restarted gateway sends (numbered from 1 again) are
//! shown too.
//!
//! The script and the styles are files, not inline, so that the page's
//! Content-Security-Policy allows no inline script or style at all
//! (`script-src 'self'; style-src 'self'`): text that ever got into the page
//! as markup could not run. Their paths carry a hash of their contents
//! (`/operator/app.<hash>.js`) and are cached for a year as immutable: the
//! page itself is never stored (`no-store`), and a gateway with
//! other files names other paths, so a browser never pairs a new page with
//! an old script, and never asks again for a file it has.

use bytes::Bytes;

/// The page, as written: it names its files by [`SCRIPT_REF`] and
/// [`STYLE_REF`], which [`OperatorPage::new`] replaces by their hashed paths.
const HTML: &str = include_str!("../../assets/operator.html");
const SCRIPT: &str = include_str!("../../assets/operator.js");
const STYLE: &str = include_str!("../../assets/operator.css");

/// How `assets/operator.html` names its script and its styles.
const SCRIPT_REF: &str = "\"/operator/app.js\"";
const STYLE_REF: &str = "\"/operator/app.css\"";

/// Headers that keep the page self-contained: it may load script and
/// styles only from this origin (its own files), talk only to this origin,
/// send no referrer (the URL fragment holds a token), and is never stored
/// (`no-store`): an upgrade of the gateway ships a new page, and a page kept
/// in the back/forward cache would keep its screen's socket open, answering
/// pings and counted as a screen, while no one sees it.
pub const PAGE_HEADERS: [(&str, &str); 5] = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
];

/// Headers of the page's script and styles besides their `Content-Type`:
/// their paths change with their contents, so they never change under one.
pub const FILE_HEADERS: [(&str, &str); 2] = [
    ("cache-control", "public, max-age=31536000, immutable"),
    ("x-content-type-options", "nosniff"),
];

/// One of the page's files as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFile {
    pub body: &'static str,
    pub content_type: &'static str,
}

/// The page and its files, with the paths they are served at; built once.
#[derive(Debug)]
pub struct OperatorPage {
    /// Shared by every answer (a clone is a reference count).
    html: Bytes,
    script_path: String,
    style_path: String,
}

impl Default for OperatorPage {
    fn default() -> Self {
        OperatorPage::new()
    }
}

impl OperatorPage {
    pub fn new() -> OperatorPage {
        let script_path = format!("/operator/app.{:016x}.js", fnv1a(SCRIPT.as_bytes()));
        let style_path = format!("/operator/app.{:016x}.css", fnv1a(STYLE.as_bytes()));
        let html = HTML
            .replace(SCRIPT_REF, &format!("\"{script_path}\""))
            .replace(STYLE_REF, &format!("\"{style_path}\""));
        OperatorPage {
            html: Bytes::from(html),
            script_path,
            style_path,
        }
    }

    /// The HTML, naming its files by their hashed paths.
    pub fn html(&self) -> Bytes {
        self.html.clone()
    }

    /// The file served at `path`, if it is one of the page's.
    pub fn file(&self, path: &str) -> Option<PageFile> {
        if path == self.script_path {
            Some(PageFile {
                body: SCRIPT,
                content_type: "text/javascript; charset=utf-8",
            })
        } else if path == self.style_path {
            Some(PageFile {
                body: STYLE,
                content_type: "text/css; charset=utf-8",
            })
        } else {
            None
        }
    }

    pub fn script_path(&self) -> &str {
        &self.script_path
    }

    pub fn style_path(&self) -> &str {
        &self.style_path
    }
}

/// FNV-1a, 64 bits: a name that changes when the contents do (not a
/// security measure: the files are the binary's own).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_its_files_by_their_hashed_paths_and_has_nothing_inline() {
        let page = OperatorPage::new();
        let html = page.html();
        let html = std::str::from_utf8(&html).expect("the page is UTF-8");
        assert_eq!(html.matches(page.script_path()).count(), 1);
        assert_eq!(html.matches(page.style_path()).count(), 1);
        assert!(!html.contains(SCRIPT_REF) && !html.contains(STYLE_REF));
        // What the policy would block: inline script, inline style, event
        // handler attributes, style attributes.
        assert!(!html.contains("<script>") && !html.contains("<style"));
        for attribute in [
            " style=",
            " onclick=",
            " onload=",
            " onsubmit=",
            " onerror=",
        ] {
            assert!(!html.contains(attribute), "{attribute} in the page");
        }
        // Nor does the script write markup or inline styles.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            ".style",
            "setAttribute",
        ] {
            assert!(!SCRIPT.contains(sink), "{sink} in the script");
        }
    }

    #[test]
    fn each_file_has_its_type_and_other_paths_are_none() {
        let page = OperatorPage::new();
        let script = page.file(page.script_path()).expect("script");
        assert!(script.content_type.starts_with("text/javascript"));
        assert!(script.body.contains("new WebSocket("));
        let style = page.file(page.style_path()).expect("style");
        assert!(style.content_type.starts_with("text/css"));
        assert!(page.file("/operator/app.js").is_none());
        assert!(page.file("/operator/app.0000000000000000.js").is_none());
    }

    #[test]
    fn the_policy_allows_nothing_inline() {
        let (_, csp) = PAGE_HEADERS[4];
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("script-src 'self'") && csp.contains("style-src 'self'"));
    }
}
