//! CI's XML ↔ its tree ([`Node`]), generically: CI's `<Request>` is the same tree the Python SDK takes
//! as a dict, and its responses and completion events parse into the same shape, so every Tag works
//! without a model per job type.
//!
//! # Writing ([`to_xml`])
//! The Python SDK's mapping (cos-python-sdk-v5 1.9.44 builds request bodies with `xmltodict.unparse`):
//! an object is an element per key, in insertion order; an array repeats the element (an empty array
//! writes nothing, an array inside an array is refused); a text is escaped (a JSON number or bool read
//! into the tree is its JSON text, `1.5`, `true`), `null` (like `""` and `{}`) an empty element. The key `#text` is the
//! element's own text, as in xmltodict. Escaping covers `& < > " '`; `\r` and whitespace at either end
//! of a text are written as character references (`&#13;`, `&#32;`) so that [`parse`]'s trimming of
//! formatting whitespace gives the exact string back. Characters XML 1.0 cannot carry at all (C0
//! controls other than tab/LF/CR, U+FFFE, U+FFFF) are refused, as are element names that are not plain
//! XML names (letters, digits, `_ - .`, no leading digit/`-`/`.`, no `:`).
//!
//! Where the bytes differ from the SDK's, the documents are the same XML: the SDK prefixes
//! `<?xml version="1.0" encoding="utf-8"?>` + newline, writes empty elements as `<E></E>` and leaves
//! quotes unescaped; [`to_xml`] writes no declaration (the element alone, ready to embed or prefix),
//! empty elements as `<E/>` (as CI's own responses do) and escapes quotes.
//!
//! # Parsing ([`parse`])
//! An element with child elements becomes an object (a repeated child an array, in document order), a
//! leaf its text as a string (`""` when empty). Text is unescaped (the five predefined entities and
//! character references; any other entity is an error), CDATA is literal text, line ends are normalized
//! to `\n`. Whitespace-only text is formatting (an element holding only that is `""`), and so is
//! literal whitespace at either end of a text when it contains a line break (pretty-printing); spaces
//! without a line break are data and kept (`<UserData> x </UserData>` is `" x "`), as is
//! whitespace written as character references or inside CDATA. Mixed content — text beside
//! child elements — keeps its non-blank text runs (each trimmed by the same rule, joined in document order) under the key
//! `"#text"`, which [`to_xml`] writes back as text. Attributes, comments and processing instructions are
//! checked for well-formedness and ignored. Refused: `<!DOCTYPE …>` (so no entity can be declared or
//! expanded), nesting deeper than [`MAX_DEPTH`], text or elements outside the one root, no root.
//! The parser is iterative and never panics; its output always satisfies
//! `parse(&to_xml(root, &v)?) == v` when `to_xml` accepts it.
//!
//! CI's JSON form of a tree is [`Node::canonicalize`] of it, written with serde.

use super::tree::{MapBuilder, Node, Repeat};
use quick_xml::events::Event;
use quick_xml::Reader;
use std::borrow::Cow;

#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("XML nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("cannot write {0} as XML")]
    Unrepresentable(String),
}

/// Deepest nesting accepted when parsing; CI's documents nest about 8 levels.
pub const MAX_DEPTH: usize = 64;

/// Key under which [`parse`] keeps the text of mixed content and [`to_xml`] writes it back.
pub const TEXT_KEY: &str = "#text";

/// Writes `node` (a map) as `<root>…</root>`, element order preserved, all text escaped.
/// A text or `Null` root is written as the root's text / an empty root; a list is refused.
pub fn to_xml(root: &str, node: &Node) -> Result<String, XmlError> {
    check_name(root)?;
    if matches!(node, Node::List(_)) {
        return Err(XmlError::Unrepresentable(format!(
            "an array as the root <{root}>"
        )));
    }
    let mut out = String::new();
    write_element(&mut out, root, node, 1)?;
    Ok(out)
}

fn write_element(out: &mut String, name: &str, node: &Node, depth: usize) -> Result<(), XmlError> {
    if depth > MAX_DEPTH {
        return Err(XmlError::TooDeep(MAX_DEPTH));
    }
    match node {
        Node::List(items) => {
            for item in items {
                if matches!(item, Node::List(_)) {
                    return Err(XmlError::Unrepresentable(format!(
                        "an array inside an array at <{name}>"
                    )));
                }
                write_element(out, name, item, depth)?;
            }
        }
        Node::Null => empty_element(out, name),
        Node::Text(s) if s.is_empty() => empty_element(out, name),
        Node::Map(entries) if entries.is_empty() => empty_element(out, name),
        Node::Map(entries) => {
            open_tag(out, name);
            for (key, child) in entries {
                if key == TEXT_KEY {
                    match child {
                        Node::Null => {}
                        Node::Text(s) => escape_text(out, s)?,
                        Node::List(_) | Node::Map(_) => {
                            return Err(XmlError::Unrepresentable(format!(
                                "a non-scalar {TEXT_KEY} in <{name}>"
                            )))
                        }
                    }
                } else {
                    check_name(key)?;
                    write_element(out, key, child, depth + 1)?;
                }
            }
            close_tag(out, name);
        }
        Node::Text(s) => {
            open_tag(out, name);
            escape_text(out, s)?;
            close_tag(out, name);
        }
    }
    Ok(())
}

fn open_tag(out: &mut String, name: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
}

fn close_tag(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn empty_element(out: &mut String, name: &str) {
    out.push('<');
    out.push_str(name);
    out.push_str("/>");
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// A character XML 1.0 can carry at all (even as a reference).
fn is_xml_char(c: char) -> bool {
    match c {
        '\t' | '\n' | '\r' => true,
        '\u{0}'..='\u{1f}' => false,
        '\u{fffe}' | '\u{ffff}' => false,
        _ => true,
    }
}

fn escape_text(out: &mut String, s: &str) -> Result<(), XmlError> {
    // Whitespace at either end is written as references so the parser's trimming of formatting keeps it.
    let start = s.len() - s.trim_start_matches(is_xml_space).len();
    let end = s.trim_end_matches(is_xml_space).len();
    for (i, c) in s.char_indices() {
        if !is_xml_char(c) {
            return Err(XmlError::Unrepresentable(format!(
                "character U+{:04X} (not allowed in XML 1.0)",
                c as u32
            )));
        }
        if (i < start || i >= end) && is_xml_space(c) {
            out.push_str(&format!("&#{};", c as u32));
            continue;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    Ok(())
}

/// A plain XML element name: a letter or `_`, then letters, digits, `_`, `-`, `.`; no namespace prefix.
fn is_valid_name(name: &str) -> bool {
    // CI's names are ASCII: checked bytewise, the general rule only for the rest.
    let bytes = name.as_bytes();
    if bytes.is_ascii() {
        return match bytes.first() {
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => bytes[1..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')),
            _ => false,
        };
    }
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn check_name(name: &str) -> Result<(), XmlError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(XmlError::Unrepresentable(format!("element name {name:?}")))
    }
}

/// A piece of an element's text: raw (still escaped, formatting whitespace trimmable) or CDATA.
enum Piece<'a> {
    Raw(Cow<'a, str>),
    CData(Cow<'a, str>),
}

struct Frame<'a> {
    name: Cow<'a, str>,
    children: MapBuilder<'a>,
    /// The current run of text (since the element's start or its last child): its first piece,
    /// then any others. Most runs are one piece, which then needs no vector.
    first: Option<Piece<'a>>,
    run: Vec<Piece<'a>>,
    /// Mixed content collected so far.
    mixed: String,
}

impl<'a> Frame<'a> {
    fn new(name: Cow<'a, str>) -> Frame<'a> {
        Frame {
            name,
            children: MapBuilder::new(),
            first: None,
            run: Vec::new(),
            mixed: String::new(),
        }
    }

    fn push(&mut self, piece: Piece<'a>) {
        match &self.first {
            None => self.first = Some(piece),
            Some(_) => self.run.push(piece),
        }
    }

    /// Ends the current text run: drops formatting whitespace (see [`edge_is_formatting`]), unescapes,
    /// returns the text (borrowed from the document when it needed no change).
    fn take_run(&mut self) -> Result<Cow<'a, str>, XmlError> {
        let mut run = std::mem::take(&mut self.run);
        if let Some(first) = self.first.take() {
            match first {
                // The common case, one plain run: the text as it stands.
                Piece::Raw(raw) if run.is_empty() && is_plain(&raw) => return Ok(raw),
                first => run.insert(0, first),
            }
        }
        let blank = run
            .iter()
            .all(|p| matches!(p, Piece::Raw(raw) if raw.chars().all(is_xml_space)));
        if blank {
            return Ok(Cow::Borrowed(""));
        }
        if edge_is_formatting(run.iter(), Edge::Start) {
            while let Some(Piece::Raw(first)) = run.first_mut() {
                let trimmed = trim_edge(first, Edge::Start);
                if trimmed.is_empty() {
                    run.remove(0);
                } else {
                    *first = trimmed;
                    break;
                }
            }
        }
        if edge_is_formatting(run.iter().rev(), Edge::End) {
            while let Some(Piece::Raw(last)) = run.last_mut() {
                let trimmed = trim_edge(last, Edge::End);
                if trimmed.is_empty() {
                    run.pop();
                } else {
                    *last = trimmed;
                    break;
                }
            }
        }
        // The common case, one plain run: its text, no copy.
        if run.len() == 1 {
            match run.pop() {
                Some(Piece::Raw(raw)) if !raw.contains(['&', '\r']) => return Ok(raw),
                Some(Piece::CData(data)) if !data.contains('\r') => return Ok(data),
                Some(piece) => run.push(piece),
                None => {}
            }
        }
        let mut text = String::new();
        for piece in run {
            match piece {
                Piece::Raw(raw) => {
                    let raw = normalize_newlines(&raw);
                    let unescaped = quick_xml::escape::unescape(&raw)
                        .map_err(|e| XmlError::Malformed(format!("in <{}>: {e}", self.name)))?;
                    text.push_str(&unescaped);
                }
                Piece::CData(data) => text.push_str(&normalize_newlines(&data)),
            }
        }
        Ok(Cow::Owned(text))
    }

    /// Closes the element into its value.
    fn finish(mut self) -> Result<(Cow<'a, str>, Node<'a>), XmlError> {
        let text = self.take_run()?;
        if self.children.is_empty() {
            return Ok((self.name, Node::Text(text)));
        }
        self.mixed.push_str(&text);
        if !self.mixed.is_empty() {
            self.children.insert(
                Cow::Borrowed(TEXT_KEY),
                Node::Text(Cow::Owned(self.mixed)),
                Repeat::Collect,
            );
        }
        Ok((self.name, Node::Map(self.children.finish())))
    }

    fn add_child(&mut self, name: Cow<'a, str>, value: Node<'a>) -> Result<(), XmlError> {
        if self.first.is_some() {
            let text = self.take_run()?;
            self.mixed.push_str(&text);
        }
        self.children.insert(name, value, Repeat::Collect);
        Ok(())
    }
}

/// Raw text that is its own value: nothing to unescape or normalize, no whitespace at either end.
fn is_plain(raw: &str) -> bool {
    !raw.contains(['&', '\r']) && !raw.starts_with(is_xml_space) && !raw.ends_with(is_xml_space)
}

/// `s` without XML whitespace at `edge`, still borrowed when it was.
fn trim_edge<'a>(s: &Cow<'a, str>, edge: Edge) -> Cow<'a, str> {
    fn trim(s: &str, edge: Edge) -> &str {
        match edge {
            Edge::Start => s.trim_start_matches(is_xml_space),
            Edge::End => s.trim_end_matches(is_xml_space),
        }
    }
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(trim(b, edge)),
        Cow::Owned(o) => Cow::Owned(trim(o, edge).to_string()),
    }
}

#[derive(Clone, Copy)]
enum Edge {
    Start,
    End,
}

/// Whether the literal whitespace at one end of a text run is formatting: it is when it holds a line
/// break (pretty-printing always does). Spaces alone are data (`<UserData> x </UserData>` keeps them).
/// `pieces` run from that end inward; CDATA ends the edge.
fn edge_is_formatting<'p, 'a: 'p>(pieces: impl Iterator<Item = &'p Piece<'a>>, edge: Edge) -> bool {
    for piece in pieces {
        let Piece::Raw(raw) = piece else {
            return false;
        };
        let white = match edge {
            Edge::Start => &raw[..raw.len() - raw.trim_start_matches(is_xml_space).len()],
            Edge::End => &raw[raw.trim_end_matches(is_xml_space).len()..],
        };
        if white.contains(['\n', '\r']) {
            return true;
        }
        if white.len() < raw.len() {
            return false;
        }
    }
    false
}

/// XML's end-of-line handling: `\r\n` and a lone `\r` become `\n`.
fn normalize_newlines(s: &str) -> Cow<'_, str> {
    if s.contains('\r') {
        Cow::Owned(s.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(s)
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, XmlError> {
    std::str::from_utf8(bytes).map_err(|_| XmlError::Malformed("invalid UTF-8".into()))
}

/// Text the reader handed out, as the part of the document it is (the reader splits only at ASCII
/// markup, so that part is valid UTF-8 and needs no second check).
fn text_of<'a>(input: &'a str, bytes: Cow<'a, [u8]>) -> Result<Cow<'a, str>, XmlError> {
    match bytes {
        Cow::Borrowed(b) => match within(input, b) {
            Some(text) => Ok(Cow::Borrowed(text)),
            None => Ok(Cow::Borrowed(utf8(b)?)),
        },
        Cow::Owned(o) => Ok(Cow::Owned(utf8(&o)?.to_string())),
    }
}

/// The part of `input` that `part` is, when `part` points into it (an element's name: the reader
/// lends it only for as long as the event).
fn within<'a>(input: &'a str, part: &[u8]) -> Option<&'a str> {
    let start = (part.as_ptr() as usize).checked_sub(input.as_ptr() as usize)?;
    input.get(start..start.checked_add(part.len())?)
}

fn element_name<'a>(
    input: &'a str,
    start: &quick_xml::events::BytesStart<'_>,
) -> Result<Cow<'a, str>, XmlError> {
    let qname = start.name();
    let name = match within(input, qname.as_ref()) {
        Some(borrowed) => Cow::Borrowed(borrowed),
        None => Cow::Owned(utf8(qname.as_ref())?.to_string()),
    };
    if !is_valid_name(&name) {
        return Err(XmlError::Malformed(format!(
            "invalid element name {name:?}"
        )));
    }
    for attr in start.attributes() {
        let attr = attr.map_err(|e| XmlError::Malformed(format!("attribute of <{name}>: {e}")))?;
        attr.unescape_value()
            .map_err(|e| XmlError::Malformed(format!("attribute of <{name}>: {e}")))?;
    }
    Ok(name)
}

/// A parsed document: the root element's name and its content, borrowed from the text.
#[derive(Debug, Clone, PartialEq)]
pub struct XmlTree<'a> {
    pub root: Cow<'a, str>,
    pub node: Node<'a>,
}

/// Parses an XML document into its root name and its tree (see the module doc for the mapping),
/// borrowing names and texts from `input` wherever they need no change.
pub fn parse(input: &str) -> Result<XmlTree<'_>, XmlError> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    let mut reader = Reader::from_str(input);
    {
        let config = reader.config_mut();
        config.trim_text(false);
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        config.allow_unmatched_ends = false;
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut doc: Option<XmlTree> = None;
    // The element opened last, while its content is at most one text: most of CI's elements are
    // leaves (`<Name>text</Name>`) and close without ever needing a frame. Any other event turns it
    // into a frame first, so the rules below see every element alike.
    let mut leaf: Option<(Cow<str>, Option<Cow<str>>)> = None;

    loop {
        let event = reader.read_event().map_err(|e| {
            XmlError::Malformed(format!("{e} (near byte {})", reader.error_position()))
        })?;
        match event {
            Event::End(end) if leaf.is_some() => {
                let Some((name, text)) = leaf.take() else {
                    unreachable!("matched on leaf.is_some()")
                };
                if end.name().as_ref() != name.as_bytes() {
                    return Err(XmlError::Malformed(format!(
                        "<{name}> closed by another tag"
                    )));
                }
                let text = leaf_text(&name, text)?;
                close(&mut stack, &mut doc, name, Node::Text(text))?;
                continue;
            }
            Event::Text(text) if matches!(leaf, Some((_, None))) => {
                if let Some((_, slot)) = &mut leaf {
                    *slot = Some(text_of(input, text.into_inner())?);
                }
                continue;
            }
            Event::Comment(_) | Event::PI(_) => continue,
            _ => open_frame(&mut stack, &mut leaf),
        }
        match event {
            Event::Start(_) | Event::Empty(_) if doc.is_some() && stack.is_empty() => {
                return Err(XmlError::Malformed("more than one root element".into()));
            }
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep(MAX_DEPTH));
                }
                leaf = Some((element_name(input, &start)?, None));
            }
            Event::Empty(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep(MAX_DEPTH));
                }
                let name = element_name(input, &start)?;
                close(&mut stack, &mut doc, name, Node::Text(Cow::Borrowed("")))?;
            }
            Event::End(end) => {
                let Some(frame) = stack.pop() else {
                    return Err(XmlError::Malformed("end tag without a start tag".into()));
                };
                if end.name().as_ref() != frame.name.as_bytes() {
                    return Err(XmlError::Malformed(format!(
                        "<{}> closed by another tag",
                        frame.name
                    )));
                }
                let (name, value) = frame.finish()?;
                close(&mut stack, &mut doc, name, value)?;
            }
            Event::Text(text) => {
                let raw = text_of(input, text.into_inner())?;
                match stack.last_mut() {
                    Some(frame) => frame.push(Piece::Raw(raw)),
                    None if raw.chars().all(is_xml_space) => {}
                    None if doc.is_some() => {
                        return Err(XmlError::Malformed("text after the root element".into()))
                    }
                    None => return Err(XmlError::Malformed("text before the root element".into())),
                }
            }
            Event::CData(data) => {
                let data = text_of(input, data.into_inner())?;
                match stack.last_mut() {
                    Some(frame) => frame.push(Piece::CData(data)),
                    None => {
                        return Err(XmlError::Malformed("CDATA outside the root element".into()))
                    }
                }
            }
            Event::Decl(_) => {
                if doc.is_some() || !stack.is_empty() {
                    return Err(XmlError::Malformed(
                        "XML declaration inside the document".into(),
                    ));
                }
            }
            Event::DocType(_) => {
                return Err(XmlError::Malformed(
                    "DOCTYPE is refused (no DTDs or entity declarations)".into(),
                ))
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(frame) = stack.last() {
        return Err(XmlError::Malformed(format!(
            "document ends inside <{}>",
            frame.name
        )));
    }
    doc.ok_or_else(|| XmlError::Malformed("no root element".into()))
}

/// Turns the open leaf (if any) into a frame holding its text so far.
fn open_frame<'a>(
    stack: &mut Vec<Frame<'a>>,
    leaf: &mut Option<(Cow<'a, str>, Option<Cow<'a, str>>)>,
) {
    if let Some((name, text)) = leaf.take() {
        let mut frame = Frame::new(name);
        if let Some(text) = text {
            frame.push(Piece::Raw(text));
        }
        stack.push(frame);
    }
}

/// The text of a leaf element, as [`Frame::finish`] would give it.
fn leaf_text<'a>(
    name: &Cow<'a, str>,
    text: Option<Cow<'a, str>>,
) -> Result<Cow<'a, str>, XmlError> {
    match text {
        None => Ok(Cow::Borrowed("")),
        // The common case (take_run's first), without building a frame.
        Some(text) if is_plain(&text) => Ok(text),
        Some(text) => {
            let mut frame = Frame::new(name.clone());
            frame.push(Piece::Raw(text));
            frame.take_run()
        }
    }
}

/// Hands a closed element to its parent, or makes it the document's root.
fn close<'a>(
    stack: &mut [Frame<'a>],
    doc: &mut Option<XmlTree<'a>>,
    name: Cow<'a, str>,
    value: Node<'a>,
) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(parent) => parent.add_child(name, value),
        None if doc.is_some() => Err(XmlError::Malformed("more than one root element".into())),
        None => {
            *doc = Some(XmlTree {
                root: name,
                node: value,
            });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{json, Value};

    /// A parsed tree as a `Value`, to compare with `json!` literals.
    trait AsValue {
        fn value(&self) -> Value;
    }

    impl AsValue for XmlTree<'_> {
        fn value(&self) -> Value {
            self.node.clone().into_value()
        }
    }

    /// [`to_xml`] of a tree written with `json!`.
    fn to_xml_json(root: &str, tree: &Value) -> Result<String, XmlError> {
        to_xml(root, &Node::from_value(tree))
    }

    /// Every XML example from the reference pages that is well-formed.
    const WELL_FORMED: &[&str] = &[
        DW_XML,
        JOB_CB_XML,
        WF_XML,
        WF_CONTENT_XML,
        WF_CONTENT_NODES,
        SUBMIT_RESP,
        DESCRIBE_RESP,
        LIST_RESP,
        LIST_NODES,
        ERROR_XML,
    ];

    /// What `parse` gives back for a tree written by `to_xml`: scalars as strings, empties as `""`.
    fn as_parsed(v: &Value) -> Value {
        match v {
            Value::Null => Value::String(String::new()),
            Value::Bool(b) => Value::String(b.to_string()),
            Value::Number(n) => Value::String(n.to_string()),
            Value::String(s) => Value::String(s.clone()),
            Value::Array(items) => Value::Array(items.iter().map(as_parsed).collect()),
            Value::Object(m) if m.is_empty() => Value::String(String::new()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), as_parsed(v))).collect())
            }
        }
    }

    fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
        path.iter().fold(v, |cur, key| &cur[*key])
    }

    /// The submit request of submit-digital-watermark.md, as the dict the Python SDK takes.
    fn submit_request() -> Value {
        json!({
            "Tag": "DigitalWatermark",
            "Input": {"Object": "input/demo.mp4"},
            "Operation": {
                "DigitalWatermark": {
                    "Type": "Text", "Message": "123456789ab", "Version": "V1", "IgnoreError": false
                },
                "Output": {
                    "Region": "ap-chongqing", "Bucket": "test-123456789", "Object": "output/out.mp4"
                },
                "UserData": "This is my data.",
                "JobLevel": 0
            },
            "QueueId": "p2242ab62c7c94486915508540933a2c6",
            "CallBack": "http://callback.demo.com",
            "CallBackFormat": "JSON"
        })
    }

    #[test]
    fn parses_the_digital_watermark_callback() {
        let doc = parse(DW_XML).unwrap();
        assert_eq!(doc.root, "Response");
        let v = &doc.value();
        assert_eq!(v["EventName"], "TaskFinish");
        let d = &v["JobsDetail"];
        assert_eq!(d["JobId"], "ja8de3b46f86011ec9452c1c27f56a659");
        assert_eq!(d["Message"], "", "<Message/> is an empty string");
        assert_eq!(at(d, &["Input", "BucketId"]), "test-123456789");
        assert_eq!(
            at(d, &["Operation", "MediaInfo", "Format", "Bitrate"]),
            "2533.526000"
        );
        assert_eq!(
            at(d, &["Operation", "MediaInfo", "Format", "FormatLongName"]),
            "QuickTime / MOV"
        );
        assert_eq!(at(d, &["Operation", "MediaInfo", "Stream", "Subtitle"]), "");
        assert_eq!(
            at(
                d,
                &["Operation", "MediaResult", "OutputFile", "Md5Info", "Md5"]
            ),
            "043221daee3f4e15ff13f42329f15eb1"
        );
        assert_eq!(
            at(d, &["Operation", "UserData"]),
            "This is my DigitalWatermark job."
        );
        // Document order is kept.
        let keys: Vec<&String> = d.as_object().unwrap().keys().collect();
        assert_eq!(keys[..3], ["Code", "CreationTime", "EndTime"]);
    }

    #[test]
    fn repeated_children_become_arrays_in_document_order() {
        let doc = parse(WF_XML).unwrap().value();
        let tasks = doc["WorkflowExecution"]["Tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0]["JobId"], "j23c11e1e17b011edaab4ab15ec33d076");
        assert_eq!(tasks[1]["JobId"], "j168668b217b011ed8efb27bb229e2d11");
        let headers = doc["WorkflowExecution"]["CosHeaders"].as_array().unwrap();
        assert_eq!(headers[1]["Key"], "x-cos-request-id");
        let doc = parse(JOB_CB_XML).unwrap().value();
        let headers = doc["JobsDetail"]["Input"]["CosHeaders"].as_array().unwrap();
        assert_eq!(headers.len(), 3);
        assert_eq!(headers[2]["Value"], "10");
        // Non-adjacent repetitions still collect in order.
        let doc = parse("<R><A>1</A><B/><A>2</A><A>3</A></R>").unwrap();
        assert_eq!(doc.value(), json!({"A": ["1", "2", "3"], "B": ""}));
    }

    #[test]
    fn ci_json_form_reproduces_the_documented_json_samples() {
        // The pages' JSON samples, read by serde_json, are the canonical form of their XML samples.
        for (xml, json_text) in [(DW_XML, DW_JSON), (WF_XML, WF_JSON)] {
            let mut from_xml = parse(xml).unwrap().node;
            assert!(from_xml.canonicalize());
            let documented: Value = serde_json::from_str(json_text).unwrap();
            assert_eq!(from_xml.into_value(), documented);
        }
    }

    #[test]
    fn writes_the_sdk_mapping_exactly() {
        let v = json!({
            "Tag": "DigitalWatermark",
            "Input": {"Object": "a&b<c>\"d'"},
            "N": 1.5, "B": true, "E": null, "S": "",
            "L": [{"X": "1"}, {"X": 2}], "Skip": []
        });
        assert_eq!(
            to_xml_json("Request", &v).unwrap(),
            "<Request><Tag>DigitalWatermark</Tag>\
             <Input><Object>a&amp;b&lt;c&gt;&quot;d&apos;</Object></Input>\
             <N>1.5</N><B>true</B><E/><S/><L><X>1</X></L><L><X>2</X></L></Request>"
        );
        assert_eq!(to_xml_json("Root", &json!("x")).unwrap(), "<Root>x</Root>");
        assert_eq!(to_xml_json("Root", &json!({})).unwrap(), "<Root/>");
    }

    #[test]
    fn documented_request_round_trips() {
        let request = submit_request();
        let written = to_xml_json("Request", &request).unwrap();
        assert!(!written.starts_with("<?xml"), "no declaration: {written}");
        let doc = parse(&written).unwrap();
        assert_eq!(doc.root, "Request");
        assert_eq!(doc.value(), as_parsed(&request));
        // The page's example (with its `<CallBackFormat>JSON<CallBackFormat>` typo fixed) is the same tree.
        let fixed = SUBMIT_REQ.replace("JSON<CallBackFormat>", "JSON</CallBackFormat>");
        assert_eq!(parse(&fixed).unwrap(), doc);

        // The SDK dict of sdk-interop.md, and the syntax example of the same page.
        let sdk = json!({
            "Tag": "DigitalWatermark", "Input": {"Object": "input/demo.mp4"},
            "Operation": {
                "DigitalWatermark": {"Type": "Text", "Message": "123456789ab", "Version": "V1"},
                "Output": {"Bucket": "b-1250000000", "Region": "ap-guangzhou", "Object": "output/digital.mp4"},
                "UserData": "req-42"
            },
            "QueueId": "p0123456789abcdef", "CallBackFormat": "JSON", "CallBackType": "TDMQ",
            "CallBackMqConfig": {"MqRegion": "gz", "MqMode": "Queue", "MqName": "ci-callback-queue"}
        });
        assert_eq!(
            parse(&to_xml_json("Request", &sdk).unwrap())
                .unwrap()
                .value(),
            sdk
        );
        let syntax = SUBMIT_REQ_SYNTAX.replace("JSON<CallBackFormat>", "JSON</CallBackFormat>");
        let syntax = parse(&syntax).unwrap();
        assert_eq!(
            parse(&to_xml("Request", &syntax.node).unwrap()).unwrap(),
            syntax
        );
    }

    #[test]
    fn reads_what_the_python_sdk_writes() {
        // `qcloud_cos.cos_comm.format_xml(tree, 'Request')` of cos-python-sdk-v5 1.9.44, verbatim.
        let sdk = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Request><Tag>DW</Tag>\
                   <Input><Object>a&amp;b&lt;c&gt;\"d'</Object></Input><N>1.5</N><B>true</B><E></E>\
                   <S></S><L><X>1</X></L><L><X>2</X></L><T><A>1</A>t</T><W> pad </W></Request>";
        let tree = json!({
            "Tag": "DW", "Input": {"Object": "a&b<c>\"d'"}, "N": 1.5, "B": true, "E": null, "S": "",
            "L": [{"X": "1"}, {"X": 2}], "Skip": [], "T": {"#text": "t", "A": "1"}, "W": " pad "
        });
        let from_sdk = parse(sdk).unwrap();
        assert_eq!(
            from_sdk,
            parse(&to_xml_json("Request", &tree).unwrap()).unwrap()
        );
        assert_eq!(from_sdk.value()["W"], " pad ");
        assert_eq!(from_sdk.value()["L"], json!([{"X": "1"}, {"X": "2"}]));
        assert!(from_sdk.value().get("Skip").is_none());
    }

    #[test]
    fn documented_responses_and_events_round_trip() {
        for example in WELL_FORMED {
            let doc = parse(example).unwrap();
            let written = to_xml(&doc.root, &doc.node).unwrap();
            assert_eq!(parse(&written).unwrap(), doc);
        }
    }

    #[test]
    fn the_pages_typos_are_malformed() {
        // `<CallBackFormat>JSON<CallBackFormat>` never closes; `<MediaInfo></MeidaInfo>`;
        // `<RequestId><RequestId>`.
        for broken in [SUBMIT_REQ, SUBMIT_REQ_SYNTAX, JOB_CB_NODES, DESCRIBE_NODES] {
            assert!(
                matches!(parse(broken), Err(XmlError::Malformed(_))),
                "{broken}"
            );
        }
    }

    #[test]
    fn text_cannot_inject_markup() {
        let hostile = "</Object><Evil>x</Evil><Object>";
        let xml = to_xml_json("R", &json!({"Object": hostile, "Amp": "&lt; &amp;"})).unwrap();
        assert!(!xml.contains("<Evil>"), "{xml}");
        let doc = parse(&xml).unwrap();
        assert_eq!(doc.value(), json!({"Object": hostile, "Amp": "&lt; &amp;"}));
    }

    #[test]
    fn whitespace_and_line_ends_survive_a_round_trip() {
        for s in [
            " lead",
            "trail\t",
            "\n",
            "  ",
            "a\r\nb",
            "cr\r",
            "in  side",
            "\u{a0}nbsp\u{a0}",
        ] {
            let written = to_xml_json("R", &json!({ "S": s })).unwrap();
            let doc = parse(&written).unwrap();
            assert_eq!(doc.value()["S"], s, "{s:?}");
        }
        // Pretty-printing whitespace of a leaf is trimmed; spaces alone, CDATA and references are kept.
        let doc = parse("<R>\n  <A>\n  x y \n </A><B><![CDATA[ <c> ]]></B><C>&#32;z&#9;</C></R>")
            .unwrap();
        assert_eq!(doc.value(), json!({"A": "x y", "B": " <c> ", "C": " z\t"}));
        // Raw CR LF in the document is normalized to LF.
        assert_eq!(parse("<R>a\r\nb\rc</R>").unwrap().value(), "a\nb\nc");
    }

    #[test]
    fn refuses_what_xml_cannot_represent() {
        for name in ["", "1abc", "a b", "a<b", "ns:x", "-x", ".x", "a>"] {
            assert!(
                matches!(
                    to_xml_json("R", &json!({ name: "v" })),
                    Err(XmlError::Unrepresentable(_))
                ),
                "{name:?}"
            );
            assert!(
                matches!(
                    to_xml_json(name, &json!({})),
                    Err(XmlError::Unrepresentable(_))
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            to_xml_json("R", &json!([1])),
            Err(XmlError::Unrepresentable(_))
        ));
        assert!(matches!(
            to_xml_json("R", &json!({"A": [[1]]})),
            Err(XmlError::Unrepresentable(_))
        ));
        assert!(matches!(
            to_xml_json("R", &json!({"A": "nul\u{0}"})),
            Err(XmlError::Unrepresentable(_))
        ));
        assert!(matches!(
            to_xml_json("R", &json!({"A": "bell\u{7}"})),
            Err(XmlError::Unrepresentable(_))
        ));
        assert!(matches!(
            to_xml_json("R", &json!({"A": "\u{ffff}"})),
            Err(XmlError::Unrepresentable(_))
        ));
        assert!(matches!(
            to_xml_json("R", &json!({"#text": {"A": "1"}})),
            Err(XmlError::Unrepresentable(_))
        ));
        // Unicode names and text are fine.
        assert_eq!(
            to_xml_json("Réponse", &json!({"名": "値"})).unwrap(),
            "<Réponse><名>値</名></Réponse>"
        );
    }

    #[test]
    fn to_xml_bounds_depth() {
        let mut v = json!("leaf");
        for _ in 0..MAX_DEPTH - 1 {
            v = json!({ "A": v });
        }
        let xml = to_xml_json("R", &v).unwrap();
        assert!(parse(&xml).is_ok());
        let deeper = json!({ "A": v });
        assert!(matches!(
            to_xml_json("R", &deeper),
            Err(XmlError::TooDeep(MAX_DEPTH))
        ));
    }

    #[test]
    fn parse_details() {
        // Declaration, BOM, comments, processing instructions, attributes: accepted and ignored.
        let doc = parse(
            "\u{feff}<?xml version=\"1.0\"?><!-- c --><R a=\"1\"><?pi x?><A b='&amp;'>1<!-- c -->2</A></R>\n",
        )
        .unwrap();
        assert_eq!((doc.root.as_ref(), doc.value()), ("R", json!({"A": "12"})));
        // Character references; an empty root.
        assert_eq!(
            parse("<R>&#x4e2d;&#25991;&lt;</R>").unwrap().value(),
            "中文<"
        );
        assert_eq!(parse("<R/>").unwrap().value(), "");
        // Mixed content keeps its text under #text, and writes it back.
        let doc = parse("<R>\n  head\n  <A>1</A> mid <B/>tail\n</R>").unwrap();
        assert_eq!(
            doc.value(),
            json!({"A": "1", "B": "", "#text": "head mid tail"})
        );
        assert_eq!(parse(&to_xml("R", &doc.node).unwrap()).unwrap(), doc);
        // Leaves (read without a frame) follow the same rules as any element.
        let doc =
            parse("<R><A> x <![CDATA[ y ]]></A><B>\n  </B><C>a<?p?>b</C><D> d </D></R>").unwrap();
        assert_eq!(
            doc.value(),
            json!({"A": " x  y ", "B": "", "C": "ab", "D": " d "})
        );
        match parse("<R><A>text") {
            Err(XmlError::Malformed(m)) => assert_eq!(m, "document ends inside <A>"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("<R><A><?xml version=\"1.0\"?></A></R>"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_malformed_documents() {
        for bad in [
            "",
            "   ",
            "just text",
            "<R>",
            "<R></S>",
            "</R>",
            "<R/><S/>",
            "<R></R><S></S>",
            "<R/>trailing",
            "text<R/>",
            "<R/><![CDATA[x]]>",
            "<R>&unknown;</R>",
            "<R>&#0;</R>",
            "<R>&#xD800;</R>",
            "<R>a & b</R>",
            "<R a=\"&bogus;\"/>",
            "<R a=\"1\" a=\"2\"/>",
            "<R><1A/></R>",
            "<R/><?xml version=\"1.0\"?>",
            "<!-- only a comment -->",
        ] {
            assert!(
                matches!(parse(bad), Err(XmlError::Malformed(_))),
                "{bad:?}: {:?}",
                parse(bad)
            );
        }
    }

    #[test]
    fn refuses_doctype_and_entities() {
        let billion_laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<Response><EventName>&lol3;</EventName></Response>"#;
        let xxe =
            r#"<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><Response>&x;</Response>"#;
        for doc in [billion_laughs, xxe, "<!DOCTYPE Response><Response/>"] {
            match parse(doc) {
                Err(XmlError::Malformed(msg)) => assert!(msg.contains("DOCTYPE"), "{msg}"),
                other => panic!("{other:?}"),
            }
        }
        // Without a DOCTYPE, an undeclared entity is still an error, never expanded.
        assert!(matches!(
            parse("<Response>&lol3;</Response>"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn bounds_nesting() {
        let nested = |n: usize| format!("{}x{}", "<a>".repeat(n), "</a>".repeat(n));
        assert_eq!(parse(&nested(MAX_DEPTH)).unwrap().root, "a");
        assert!(matches!(
            parse(&nested(MAX_DEPTH + 1)),
            Err(XmlError::TooDeep(MAX_DEPTH))
        ));
        let empty_leaf = format!(
            "{}<a/>{}",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        assert!(matches!(
            parse(&empty_leaf),
            Err(XmlError::TooDeep(MAX_DEPTH))
        ));
        // 100k levels, unclosed: refused at MAX_DEPTH, no stack overflow.
        assert!(matches!(
            parse(&"<a>".repeat(100_000)),
            Err(XmlError::TooDeep(MAX_DEPTH))
        ));
    }

    #[test]
    fn every_truncation_of_an_example_is_refused() {
        for example in WELL_FORMED {
            let end = example.trim_end().len();
            for cut in 0..end {
                if !example.is_char_boundary(cut) {
                    continue;
                }
                assert!(
                    parse(&example[..cut]).is_err(),
                    "cut at {cut}: {:?}",
                    &example[..cut]
                );
            }
            assert!(parse(&example[..end]).is_ok());
        }
    }

    #[test]
    fn random_input_never_panics_and_what_parses_round_trips() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let alphabet = b"<>/&;#x![]CDAT?=\"' \n\tabR0-:";
        let mut parsed = 0;
        for round in 0..6000 {
            let bytes: Vec<u8> = if round % 3 == 0 {
                (0..rng.random_range(0..200))
                    .map(|_| rng.random())
                    .collect()
            } else {
                let mut b = WELL_FORMED[round % WELL_FORMED.len()].as_bytes().to_vec();
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(0..b.len());
                    match rng.random_range(0..3) {
                        0 => b[i] = alphabet[rng.random_range(0..alphabet.len())],
                        1 => {
                            b.remove(i);
                        }
                        _ => b.insert(i, alphabet[rng.random_range(0..alphabet.len())]),
                    }
                }
                b
            };
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(doc) = parse(&text) {
                parsed += 1;
                if let Ok(xml) = to_xml(&doc.root, &doc.node) {
                    assert_eq!(parse(&xml).unwrap(), doc, "{text:?}");
                }
            }
        }
        assert!(
            parsed > 100,
            "the mutations should leave many documents well-formed ({parsed})"
        );
    }
}
