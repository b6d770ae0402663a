//! How much of a document a reader accepts, and the count that enforces it.

/// Bounds on one document. Each user of [`super`] sets its own: `soap`
/// reads tiny envelopes, `sources::servio` files of hundreds of megabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Elements open at once, the root included.
    pub max_depth: usize,
    /// Elements in the whole document (`usize::MAX`: no bound, for files
    /// whose size bounds them).
    pub max_elements: usize,
    /// Bytes of one field's text after trimming.
    pub max_field_bytes: usize,
    /// Bytes of any one tag (with its attributes) or run of text between
    /// tags, as read from the input: what the reader holds in memory at once.
    pub max_run_bytes: usize,
    /// Bytes of the whole document.
    pub max_document_bytes: u64,
}

/// A bound of [`Limits`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("XML nested deeper than {0} elements")]
    TooDeep(usize),
    #[error("more than {0} XML elements")]
    TooManyElements(usize),
}

/// The depth and element count of the document being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nesting {
    max_depth: usize,
    max_elements: usize,
    depth: usize,
    elements: usize,
}

impl Nesting {
    pub fn new(limits: &Limits) -> Nesting {
        Nesting {
            max_depth: limits.max_depth,
            max_elements: limits.max_elements,
            depth: 0,
            elements: 0,
        }
    }

    /// An element starts: counted, then its depth checked.
    pub fn enter(&mut self) -> Result<(), LimitError> {
        self.elements += 1;
        if self.elements > self.max_elements {
            return Err(LimitError::TooManyElements(self.max_elements));
        }
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(LimitError::TooDeep(self.max_depth));
        }
        Ok(())
    }

    /// An element ends. quick-xml refuses an end tag without a start, so the
    /// depth is never 0 here; saturating keeps that a refusal rather than a
    /// panic if it ever were.
    pub fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Elements open now; 0 outside the root.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_depth: usize, max_elements: usize) -> Limits {
        Limits {
            max_depth,
            max_elements,
            max_field_bytes: 1,
            max_run_bytes: 1,
            max_document_bytes: 1,
        }
    }

    #[test]
    fn depth_and_elements_are_bounded() {
        let mut n = Nesting::new(&limits(2, 10));
        n.enter().expect("1");
        n.enter().expect("2");
        assert_eq!(n.depth(), 2);
        assert_eq!(n.enter(), Err(LimitError::TooDeep(2)));
        let mut n = Nesting::new(&limits(2, 3));
        for _ in 0..3 {
            n.enter().expect("within");
            n.leave();
        }
        assert_eq!(n.enter(), Err(LimitError::TooManyElements(3)));
        assert_eq!(
            LimitError::TooDeep(64).to_string(),
            "XML nested deeper than 64 elements"
        );
    }
}
