//! Splitting rows of `COPY ... TO STDOUT (FORMAT text)` into fields.
//!
//! A line (without its trailing newline) holds fields separated by tabs. A field that is exactly
//! `\N` is NULL. Otherwise backslash escapes are undone: `\b \f \n \r \t \v \\`, `\` + 1-3 octal
//! digits, `\x` + 1-2 hex digits; a backslash before any other byte stands for that byte (so `\.`
//! is `.`; the `\.` end-of-data line only exists in COPY files and is not expected here). The
//! resulting bytes are the type's text output, as [`super::types::parse_text`] expects; they are
//! not checked for UTF-8 here.
//!
//! Two interfaces:
//! - [`CopyLine`]: zero allocation in steady state. One reusable byte buffer holds every field's
//!   de-escaped bytes back to back, plus a reusable list of ranges into it.
//! - [`split_copy_line`]: the simple `Vec<Option<Vec<u8>>>` form; it reuses the inner vectors of
//!   non-NULL fields from the previous line.
//!
//! An empty line is one empty field (a zero-column table's rows cannot be told apart from it).

use std::ops::Range;

use crate::error::{Error, Result};

const DELIMITER: u8 = b'\t';

/// One split COPY line: fields as ranges into a reusable buffer.
#[derive(Debug, Default, Clone)]
pub struct CopyLine {
    buf: Vec<u8>,
    fields: Vec<Option<Range<usize>>>,
}

impl CopyLine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Splits `line`, replacing the previous contents. On error the contents are unspecified.
    pub fn split(&mut self, line: &[u8]) -> Result<()> {
        self.buf.clear();
        self.fields.clear();
        let buf = &mut self.buf;
        let fields = &mut self.fields;
        for_each_field(line, |raw| {
            fields.push(match raw {
                None => None,
                Some(raw) => {
                    let start = buf.len();
                    unescape_into(raw, buf).map_err(|e| bad_escape(line, e))?;
                    Some(start..buf.len())
                }
            });
            Ok(())
        })
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Field `i`: `None` past the end, `Some(None)` for NULL.
    pub fn get(&self, i: usize) -> Option<Option<&[u8]>> {
        self.fields
            .get(i)
            .map(|f| f.as_ref().map(|r| &self.buf[r.clone()]))
    }

    /// The fields in order, `None` for NULL.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<&[u8]>> + '_ {
        self.fields
            .iter()
            .map(|f| f.as_ref().map(|r| &self.buf[r.clone()]))
    }
}

/// Splits one line of COPY text format (without the trailing newline) into `out`, `None` for
/// NULL (`\N`), undoing backslash escapes. `out` is overwritten; its non-NULL entries' buffers
/// are reused. Malformed escapes (a lone trailing backslash) are [`Error::data`].
pub fn split_copy_line(line: &[u8], out: &mut Vec<Option<Vec<u8>>>) -> Result<()> {
    let mut n = 0;
    for_each_field(line, |raw| {
        if out.len() == n {
            out.push(None);
        }
        match raw {
            None => out[n] = None,
            Some(raw) => {
                let v = out[n].get_or_insert_with(Vec::new);
                v.clear();
                unescape_into(raw, v).map_err(|e| bad_escape(line, e))?;
            }
        }
        n += 1;
        Ok(())
    })?;
    out.truncate(n);
    Ok(())
}

#[cold]
fn bad_escape(line: &[u8], reason: &'static str) -> Error {
    const MAX: usize = 60;
    let shown = String::from_utf8_lossy(&line[..line.len().min(MAX)]);
    let more = if line.len() > MAX { "..." } else { "" };
    Error::data(format!(
        "malformed COPY text line {shown:?}{more}: {reason}"
    ))
}

/// Calls `f` for each raw (still escaped) field; `None` for `\N`. Escape-aware: a backslash
/// hides the byte after it, so an escaped delimiter does not split.
fn for_each_field<'a>(
    line: &'a [u8],
    mut f: impl FnMut(Option<&'a [u8]>) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    let mut i = 0;
    loop {
        match line.get(i) {
            Some(&DELIMITER) => {
                f(raw_field(&line[start..i]))?;
                i += 1;
                start = i;
            }
            Some(b'\\') => i += 2,
            Some(_) => i += 1,
            None => {
                // `i` may be one past the end after a trailing backslash: keep it in the field
                // so unescaping reports it.
                f(raw_field(&line[start..]))?;
                return Ok(());
            }
        }
    }
}

#[inline]
fn raw_field(raw: &[u8]) -> Option<&[u8]> {
    if raw == b"\\N" { None } else { Some(raw) }
}

/// Appends the de-escaped bytes of `raw` to `out`.
fn unescape_into(raw: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), &'static str> {
    // Fast path: most fields have no escapes.
    let Some(first) = raw.iter().position(|b| *b == b'\\') else {
        out.extend_from_slice(raw);
        return Ok(());
    };
    out.reserve(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&c) = raw.get(i + 1) else {
            return Err("backslash at the end of the line");
        };
        i += 2;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = (v << 3) | u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                // As PostgreSQL does: `\777` keeps the low 8 bits.
                out.push((v & 0xff) as u8);
            }
            b'x' => match raw.get(i).and_then(|d| hex_val(*d)) {
                Some(h) => {
                    i += 1;
                    let mut v = h;
                    if let Some(l) = raw.get(i).and_then(|d| hex_val(*d)) {
                        v = (v << 4) | l;
                        i += 1;
                    }
                    out.push(v);
                }
                // `\x` without hex digits is a plain `x`.
                None => out.push(b'x'),
            },
            other => out.push(other),
        }
    }
    Ok(())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        split_copy_line(line, &mut out).unwrap();
        // Both interfaces agree.
        let mut cl = CopyLine::new();
        cl.split(line).unwrap();
        let other: Vec<Option<Vec<u8>>> = cl.iter().map(|f| f.map(<[u8]>::to_vec)).collect();
        assert_eq!(out, other);
        assert_eq!(cl.len(), out.len());
        out
    }

    fn s(v: &str) -> Option<Vec<u8>> {
        Some(v.as_bytes().to_vec())
    }

    #[test]
    fn plain_fields_and_nulls() {
        assert_eq!(split(b"1\tabc\t\\N\t"), vec![s("1"), s("abc"), None, s("")]);
        assert_eq!(split(b""), vec![s("")]);
        assert_eq!(split(b"\\N"), vec![None]);
        assert_eq!(split(b"\t"), vec![s(""), s("")]);
        // Only a field that is exactly \N is NULL.
        assert_eq!(
            split(b"\\\\N\ta\\N\t\\Nx"),
            vec![s("\\N"), s("aN"), s("Nx")]
        );
        assert_eq!(split("żółw\t🦀".as_bytes()), vec![s("żółw"), s("🦀")]);
    }

    #[test]
    fn escapes() {
        assert_eq!(
            split(b"a\\tb\\nc\\rd\\\\e\\bf\\fg\\vh"),
            vec![Some(b"a\tb\nc\rd\\e\x08f\x0cg\x0bh".to_vec())]
        );
        // Octal: 1-3 digits, low 8 bits kept.
        assert_eq!(
            split(b"\\0\\12\\101\\1012\\777"),
            vec![Some(b"\0\nAA2\xff".to_vec())]
        );
        assert_eq!(split(b"\\8"), vec![s("8")]);
        // Hex: 1-2 digits; \x alone is x.
        assert_eq!(
            split(b"\\x41\\x4\\x4142\\xg\\x"),
            vec![Some(b"A\x04A42xgx".to_vec())]
        );
        // Other escaped bytes stand for themselves, including an escaped tab: no split.
        assert_eq!(split(b"\\.\\a\\\t|"), vec![s(".a\t|")]);
        // A bytea field as COPY writes it: the type's `\x..` text with its backslash escaped.
        assert_eq!(split(b"7\t\\\\x0a0b"), vec![s("7"), s("\\x0a0b")]);
        // An array of quoted strings: backslashes doubled by COPY.
        assert_eq!(split(b"{\"a\\\\\"b\"}"), vec![s("{\"a\\\"b\"}")]);
    }

    #[test]
    fn malformed() {
        for line in [&b"abc\\"[..], b"\\", b"a\tb\\"] {
            let mut out = Vec::new();
            let e = split_copy_line(line, &mut out).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Data);
            assert!(e.to_string().contains("backslash at the end"), "{e}");
            assert!(CopyLine::new().split(line).is_err());
        }
    }

    #[test]
    fn buffers_are_reused() {
        let mut out = Vec::new();
        split_copy_line(b"aaaaaaaaaaaaaaaa\tbbbbbbbbbbbbbbbbbb\tc", &mut out).unwrap();
        let p0 = out[0].as_ref().unwrap().as_ptr();
        split_copy_line(b"x\t\\N", &mut out).unwrap();
        assert_eq!(out, vec![s("x"), None]);
        assert_eq!(out[0].as_ref().unwrap().as_ptr(), p0);

        let mut cl = CopyLine::new();
        cl.split(b"aaaaaaaaaaaaaaaaaaaaaaaaa\tb\tc").unwrap();
        let cap = (cl.buf.capacity(), cl.fields.capacity());
        cl.split(b"x\t\\N\tz").unwrap();
        assert_eq!((cl.buf.capacity(), cl.fields.capacity()), cap);
        assert_eq!(cl.get(0), Some(Some(&b"x"[..])));
        assert_eq!(cl.get(1), Some(None));
        assert_eq!(cl.get(3), None);
    }

    #[test]
    fn random_lines_never_panic() {
        let alphabet = b"\\\tNx0179abfnrtv.\"{},";
        let mut rng = fastrand::Rng::with_seed(3);
        let mut out = Vec::new();
        let mut cl = CopyLine::new();
        for _ in 0..20_000 {
            let line: Vec<u8> = (0..rng.usize(..24))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let a = split_copy_line(&line, &mut out).is_ok();
            assert_eq!(a, cl.split(&line).is_ok());
        }
    }
}
