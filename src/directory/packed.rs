//! The compact form an [`Entry`](super::Entry) keeps its record in.
//!
//! A million records stay in memory. Kept as canonical JSON (about 370
//! bytes a record with the fields of issue 17), each record repeated every
//! key name, the id and change marker the entry also kept apart, and the
//! name its rendered SayName answer already holds. Here the record is one
//! allocation: the id, the INN and the change marker first, each after its
//! length (read by the index without decoding the rest), then every other
//! field present as a one-byte tag and its value. A name that the entry's
//! answer holds byte for byte (with the SOAP renderer, any name without
//! characters XML escapes, after the answer's three bytes of lengths) is
//! kept as where it is there.
//!
//! The canonical JSON is written again from this form when it is needed (a
//! snapshot save or a 1C refresh's diff against the snapshot, the API, the
//! sync feed): straight from the form, without decoding into a
//! [`Counterparty`], the keys in the model's order and every string escaped
//! by serde_json, so the bytes are those serde_json writes for the record,
//! those the entry used to keep (the unit tests check it on random
//! records). The content hash, taken of that JSON before packing, does not
//! change.
//!
//! Every byte the form adds (tags, lengths, a kind, a category) is below
//! 0x80, so the whole form is UTF-8 and kept as a `str`: the id and INN are
//! sliced out of it without checking their bytes again.

use super::model::{Counterparty, Kind, Link};

/// A record in compact form. See the module's documentation.
///
/// One pointer and a length: the lengths of the fields read in place are in
/// the text, so that an [`Entry`](super::Entry) stays within 104 bytes
/// (with its `Arc`'s counts, the allocator's 128-byte size class).
#[derive(Debug, Clone)]
pub(super) struct Packed {
    /// The id's length and the id; the INN's and the INN; the change
    /// marker's and the change marker (a length of 0 for an absent field,
    /// its length + 1 for a present one: `Some("")` is not `None`); then the
    /// other fields, tagged.
    text: Box<str>,
}

/// A record whose compact form does not read back: only a bug could cause it.
#[derive(Debug, thiserror::Error)]
#[error("an entry's compact record does not read back: {0}")]
pub(super) struct Corrupt(&'static str);

// Field tags, in the model's order (the order the JSON is written in).
const NAME: u8 = 1;
/// The name is in the entry's answer: its offset and length there follow.
const NAME_IN_ANSWER: u8 = 2;
const FULL_NAME: u8 = 3;
const KPP: u8 = 4;
const OGRN: u8 = 5;
const OGRNIP: u8 = 6;
const CODE: u8 = 7;
const KIND: u8 = 8;
const CATEGORY: u8 = 9;
const MANAGER_PHONE: u8 = 10;
const MANAGER_NAME: u8 = 11;
const MANAGER_SOURCE: u8 = 12;
const PHONES: u8 = 13;
const EMAILS: u8 = 14;
const ADDRESS: u8 = 15;
const LINKS: u8 = 16;

impl Packed {
    /// `record` (with its id and change marker) in compact form. `answer`
    /// is the entry's rendered SayName answer, kept beside it: a name it
    /// holds as it is is not stored twice.
    pub(super) fn new(record: &Counterparty, answer: &[u8]) -> Packed {
        let mut out = String::with_capacity(estimate(record));
        put_len(&mut out, record.id.len());
        out.push_str(&record.id);
        put_apart(&mut out, record.inn.as_deref());
        put_apart(&mut out, record.data_version.as_deref());
        match find(answer, record.name.as_bytes()) {
            Some(offset) => {
                out.push(char::from(NAME_IN_ANSWER));
                put_len(&mut out, offset);
                put_len(&mut out, record.name.len());
            }
            None => put_text(&mut out, NAME, &record.name),
        }
        put_opt(&mut out, FULL_NAME, record.full_name.as_deref());
        put_opt(&mut out, KPP, record.kpp.as_deref());
        put_opt(&mut out, OGRN, record.ogrn.as_deref());
        put_opt(&mut out, OGRNIP, record.ogrnip.as_deref());
        put_opt(&mut out, CODE, record.code.as_deref());
        if let Some(kind) = record.kind {
            out.push(char::from(KIND));
            out.push(char::from(kind_code(kind)));
        }
        if let Some(category) = record.category {
            out.push(char::from(CATEGORY));
            put_varint(&mut out, zigzag(category));
        }
        put_opt(&mut out, MANAGER_PHONE, record.manager_phone.as_deref());
        put_opt(&mut out, MANAGER_NAME, record.manager_name.as_deref());
        put_opt(&mut out, MANAGER_SOURCE, record.manager_source.as_deref());
        put_list(&mut out, PHONES, &record.phones);
        put_list(&mut out, EMAILS, &record.emails);
        put_opt(&mut out, ADDRESS, record.address.as_deref());
        if !record.links.is_empty() {
            out.push(char::from(LINKS));
            put_len(&mut out, record.links.len());
            for link in &record.links {
                for text in [&link.system, &link.kind, &link.url] {
                    put_len(&mut out, text.len());
                    out.push_str(text);
                }
            }
        }
        // A copy of exactly its length: shrinking the buffer in place would
        // leave the block in the size class of the estimate (mimalloc keeps
        // a block it shrinks by less than half), up to 32 bytes more.
        Packed {
            text: Box::from(out.as_str()),
        }
    }

    /// The id: on the index's every comparison, so read with no more than
    /// its length (one byte for ids up to 63 bytes).
    pub(super) fn id(&self) -> &str {
        let mut r = self.reader(0);
        r.text().unwrap_or_default()
    }

    /// The INN as the record has it (`Some("")` for an empty one).
    pub(super) fn inn(&self) -> Option<&str> {
        let mut r = self.reader(0);
        r.text().ok()?;
        r.apart().ok()?
    }

    pub(super) fn data_version(&self) -> Option<&str> {
        let mut r = self.reader(0);
        r.text().ok()?;
        r.apart().ok()?;
        r.apart().ok()?
    }

    /// Bytes held on the heap (the tests' measure of what packing saves).
    #[cfg(test)]
    pub(super) fn heap_len(&self) -> usize {
        self.text.len()
    }

    /// The record again, as it was given to [`Packed::new`]; `answer` must
    /// be the answer given then.
    pub(super) fn unpack(&self, answer: &[u8]) -> Result<Counterparty, Corrupt> {
        let mut r = self.reader(0);
        let mut record = Counterparty {
            id: r.text()?.into(),
            inn: r.apart()?.map(Into::into),
            data_version: r.apart()?.map(Into::into),
            ..Counterparty::default()
        };
        let mut links = Vec::new();
        while let Some(tag) = r.byte() {
            match tag {
                NAME => record.name = r.text()?.into(),
                NAME_IN_ANSWER => record.name = r.name_in(answer)?.into(),
                FULL_NAME => record.full_name = Some(r.text()?.into()),
                KPP => record.kpp = Some(r.text()?.into()),
                OGRN => record.ogrn = Some(r.text()?.into()),
                OGRNIP => record.ogrnip = Some(r.text()?.into()),
                CODE => record.code = Some(r.text()?.into()),
                KIND => {
                    let code = r.byte().ok_or(Corrupt("kind cut"))?;
                    record.kind = Some(kind_of(code).ok_or(Corrupt("unknown kind"))?);
                }
                CATEGORY => record.category = Some(unzigzag(r.varint()?)),
                MANAGER_PHONE => record.manager_phone = Some(r.text()?.into()),
                MANAGER_NAME => record.manager_name = Some(r.text()?.into()),
                MANAGER_SOURCE => record.manager_source = Some(r.text()?.into()),
                PHONES => record.phones = r.list()?,
                EMAILS => record.emails = r.list()?,
                ADDRESS => record.address = Some(r.text()?.into()),
                LINKS => {
                    let n = r.len()?;
                    links.reserve_exact(n);
                    for _ in 0..n {
                        links.push(Link {
                            system: r.text()?.into(),
                            kind: r.text()?.into(),
                            url: r.text()?.into(),
                        });
                    }
                }
                _ => return Err(Corrupt("unknown tag")),
            }
        }
        record.links = links.into_boxed_slice();
        Ok(record)
    }

    /// Appends the record's canonical JSON to `buf`: the bytes
    /// `serde_json::to_writer` writes for what [`Packed::unpack`] gives.
    pub(super) fn write_json(&self, answer: &[u8], buf: &mut Vec<u8>) -> Result<(), Corrupt> {
        let mut r = self.reader(0);
        let id = r.text()?;
        let mut inn = r.apart()?;
        let version = r.apart()?;
        let mut json = Json { buf };
        json.buf.push(b'{');
        json.key("id", true);
        json.string(id);
        let mut phones_written = false;
        while let Some(tag) = r.byte() {
            // The fields kept apart or always written, in the model's order.
            if tag >= KPP {
                if let Some(inn) = inn.take() {
                    json.text_field("inn", inn);
                }
            }
            if tag > PHONES && !phones_written {
                json.key("phones", false);
                json.buf.extend_from_slice(b"[]");
                phones_written = true;
            }
            match tag {
                NAME => json.text_field("name", r.text()?),
                NAME_IN_ANSWER => json.text_field("name", r.name_in(answer)?),
                FULL_NAME => json.text_field("full_name", r.text()?),
                KPP => json.text_field("kpp", r.text()?),
                OGRN => json.text_field("ogrn", r.text()?),
                OGRNIP => json.text_field("ogrnip", r.text()?),
                CODE => json.text_field("code", r.text()?),
                KIND => {
                    let code = r.byte().ok_or(Corrupt("kind cut"))?;
                    let kind = kind_of(code).ok_or(Corrupt("unknown kind"))?;
                    json.key("kind", false);
                    json.serialize(&kind);
                }
                CATEGORY => {
                    json.key("category", false);
                    json.serialize(&unzigzag(r.varint()?));
                }
                MANAGER_PHONE => json.text_field("manager_phone", r.text()?),
                MANAGER_NAME => json.text_field("manager_name", r.text()?),
                MANAGER_SOURCE => json.text_field("manager_source", r.text()?),
                PHONES | EMAILS => {
                    json.key(if tag == PHONES { "phones" } else { "emails" }, false);
                    phones_written |= tag == PHONES;
                    json.buf.push(b'[');
                    for i in 0..r.len()? {
                        if i > 0 {
                            json.buf.push(b',');
                        }
                        json.string(r.text()?);
                    }
                    json.buf.push(b']');
                }
                ADDRESS => json.text_field("address", r.text()?),
                LINKS => {
                    json.key("links", false);
                    json.buf.push(b'[');
                    for i in 0..r.len()? {
                        if i > 0 {
                            json.buf.push(b',');
                        }
                        json.buf.push(b'{');
                        json.key("system", true);
                        json.string(r.text()?);
                        json.text_field("kind", r.text()?);
                        json.text_field("url", r.text()?);
                        json.buf.push(b'}');
                    }
                    json.buf.push(b']');
                }
                _ => return Err(Corrupt("unknown tag")),
            }
        }
        if let Some(inn) = inn {
            json.text_field("inn", inn); // a record of no field after its name but the INN
        }
        if !phones_written {
            json.key("phones", false);
            json.buf.extend_from_slice(b"[]");
        }
        if let Some(version) = version {
            json.text_field("data_version", version);
        }
        json.buf.push(b'}');
        Ok(())
    }

    fn reader(&self, at: usize) -> Reader<'_> {
        Reader {
            text: &self.text,
            at,
        }
    }
}

/// Where `needle` first is in `haystack`. Answers are a few hundred bytes
/// and this runs once per record built: a plain search is enough.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Appends a field read in place (INN, change marker): 0 when absent, its
/// length + 1 and its text when present.
fn put_apart(out: &mut String, value: Option<&str>) {
    match value {
        Some(v) => {
            put_len(out, v.len() + 1);
            out.push_str(v);
        }
        None => put_len(out, 0),
    }
}

/// Bytes the compact form of `record` takes, about: one reservation.
fn estimate(r: &Counterparty) -> usize {
    let opt = |v: &Option<Box<str>>| v.as_ref().map_or(0, |v| v.len() + 3);
    let list = |v: &[Box<str>]| v.iter().map(|s| s.len() + 2).sum::<usize>() + 3;
    r.id.len()
        + r.name.len()
        + 3
        + [
            &r.inn,
            &r.data_version,
            &r.full_name,
            &r.kpp,
            &r.ogrn,
            &r.ogrnip,
            &r.code,
            &r.manager_phone,
            &r.manager_name,
            &r.manager_source,
            &r.address,
        ]
        .into_iter()
        .map(opt)
        .sum::<usize>()
        + 16
        + list(&r.phones)
        + list(&r.emails)
        + r.links
            .iter()
            .map(|l| l.system.len() + l.kind.len() + l.url.len() + 6)
            .sum::<usize>()
}

fn put_text(out: &mut String, tag: u8, text: &str) {
    out.push(char::from(tag));
    put_len(out, text.len());
    out.push_str(text);
}

fn put_opt(out: &mut String, tag: u8, text: Option<&str>) {
    if let Some(text) = text {
        put_text(out, tag, text);
    }
}

fn put_list(out: &mut String, tag: u8, items: &[Box<str>]) {
    if items.is_empty() {
        return; // read back as the empty list serde gives an absent one
    }
    out.push(char::from(tag));
    put_len(out, items.len());
    for item in items {
        put_len(out, item.len());
        out.push_str(item);
    }
}

fn put_len(out: &mut String, len: usize) {
    put_varint(out, len as u64);
}

/// Six bits a byte, least significant first, 0x40 set on every byte but the
/// last: each byte is ASCII, so the form stays UTF-8.
fn put_varint(out: &mut String, mut v: u64) {
    loop {
        let low = (v & 0x3f) as u8;
        v >>= 6;
        if v == 0 {
            out.push(char::from(low));
            return;
        }
        out.push(char::from(low | 0x40));
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn kind_code(kind: Kind) -> u8 {
    match kind {
        Kind::Legal => 0,
        Kind::SoleProprietor => 1,
        Kind::Person => 2,
    }
}

fn kind_of(code: u8) -> Option<Kind> {
    match code {
        0 => Some(Kind::Legal),
        1 => Some(Kind::SoleProprietor),
        2 => Some(Kind::Person),
        _ => None,
    }
}

/// Writes JSON as serde_json writes the model: compact, keys in order,
/// strings escaped by serde_json itself.
struct Json<'a> {
    buf: &'a mut Vec<u8>,
}

impl Json<'_> {
    fn key(&mut self, key: &str, first: bool) {
        if !first {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    fn string(&mut self, text: &str) {
        self.serialize(text);
    }

    fn text_field(&mut self, key: &str, text: &str) {
        self.key(key, false);
        self.string(text);
    }

    /// A string, number or kind: writing one into a `Vec` cannot fail.
    fn serialize<T: serde::Serialize + ?Sized>(&mut self, value: &T) {
        let _ = serde_json::to_writer(&mut *self.buf, value);
    }
}

/// Reads the tagged part of the form.
struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.text.as_bytes().get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn varint(&mut self) -> Result<u64, Corrupt> {
        let mut v = 0u64;
        for shift in (0..64).step_by(6) {
            let b = self.byte().ok_or(Corrupt("number cut"))?;
            v |= u64::from(b & 0x3f) << shift;
            if b & 0x40 == 0 {
                return Ok(v);
            }
        }
        Err(Corrupt("number too long"))
    }

    fn len(&mut self) -> Result<usize, Corrupt> {
        usize::try_from(self.varint()?).map_err(|_| Corrupt("length"))
    }

    fn text(&mut self) -> Result<&'a str, Corrupt> {
        let len = self.len()?;
        let end = self.at.checked_add(len).ok_or(Corrupt("length"))?;
        let text = self.text.get(self.at..end).ok_or(Corrupt("text cut"))?;
        self.at = end;
        Ok(text)
    }

    /// A name kept as where it is in `answer` (offset, length).
    fn name_in<'b>(&mut self, answer: &'b [u8]) -> Result<&'b str, Corrupt> {
        let offset = self.len()?;
        let len = self.len()?;
        let name = offset
            .checked_add(len)
            .and_then(|end| answer.get(offset..end))
            .ok_or(Corrupt("name past the answer"))?;
        std::str::from_utf8(name).map_err(|_| Corrupt("name in answer"))
    }

    /// A field written by [`put_apart`].
    fn apart(&mut self) -> Result<Option<&'a str>, Corrupt> {
        let Some(len) = self.len()?.checked_sub(1) else {
            return Ok(None);
        };
        let end = self.at.checked_add(len).ok_or(Corrupt("length"))?;
        let text = self.text.get(self.at..end).ok_or(Corrupt("text cut"))?;
        self.at = end;
        Ok(Some(text))
    }

    fn list(&mut self) -> Result<Vec<Box<str>>, Corrupt> {
        let n = self.len()?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.text()?.into());
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests;
