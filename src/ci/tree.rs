//! [`Node`]: one of CI's trees (a response, a completion event) borrowed from the bytes it was read
//! from, whatever their format.
//!
//! Why not `serde_json::Value`: an owned tree allocates every element name, every text and a hash
//! map per element, then frees them all once the event is normalized: most of the completion path's
//! own CPU (docs/performance.md, finding 14). A `Node` borrows names and texts from the payload
//! (copies are made only where the text must change: entities, escapes, numbers) and keeps each
//! element's children in one vector.
//!
//! The shape is CI's: an element with children is a [`Node::Map`] (keys unique, document order), a
//! repeated element or a JSON array a [`Node::List`], a leaf its text. JSON numbers and booleans are
//! kept as their text, as CI writes them in XML (`"JobLevel": 0` reads as `"0"`).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Node<'a> {
    /// JSON `null`.
    #[default]
    Null,
    Text(Cow<'a, str>),
    Map(Vec<(Cow<'a, str>, Node<'a>)>),
    List(Vec<Node<'a>>),
}

impl<'a> Node<'a> {
    /// The child `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node<'a>> {
        match self {
            Node::Map(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value itself, or the first element of a list (CI writes one element or several alike).
    pub fn one(&self) -> Option<&Node<'a>> {
        match self {
            Node::List(items) => items.first(),
            Node::Null => None,
            other => Some(other),
        }
    }

    pub fn one_mut(&mut self) -> Option<&mut Node<'a>> {
        match self {
            Node::List(items) => items.first_mut(),
            Node::Null => None,
            other => Some(other),
        }
    }

    /// Every element of a one-or-several value.
    pub fn many(&self) -> &[Node<'a>] {
        match self {
            Node::List(items) => items,
            Node::Null => &[],
            other => std::slice::from_ref(other),
        }
    }

    pub fn is_map(&self) -> bool {
        matches!(self, Node::Map(_))
    }

    /// The text at `path`, each step one-or-several tolerant; empty text counts as absent.
    pub fn text_at(&self, path: &[&str]) -> Option<&str> {
        let mut cur = self;
        for key in path {
            cur = cur.one()?.get(key)?;
        }
        match cur.one()? {
            Node::Text(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// The text of a leaf.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Takes the value out, leaving `Null`.
    pub fn take(&mut self) -> Node<'a> {
        std::mem::take(self)
    }

    /// Sets the child `key` of a map: in its place when it is there, last otherwise. Not a map:
    /// nothing happens.
    pub fn insert(&mut self, key: impl Into<Cow<'a, str>>, value: Node<'a>) {
        if let Node::Map(entries) = self {
            let key = key.into();
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some((_, slot)) => *slot = value,
                None => entries.push((key, value)),
            }
        }
    }

    /// Removes the child `key` of a map, keeping the others in order.
    pub fn remove(&mut self, key: &str) -> Option<Node<'a>> {
        match self {
            Node::Map(entries) => {
                let i = entries.iter().position(|(k, _)| k == key)?;
                Some(entries.remove(i).1)
            }
            _ => None,
        }
    }

    /// CI's mechanical XML → JSON conversion, in place: empty texts, nulls, and maps/lists left
    /// empty are dropped, a list left with one element becomes that element (so one child is an
    /// object, several an array). Key order is kept. Returns false when nothing is left (the node is
    /// then `Null`). CI's JSON events are this of its XML ones (the emulator writes them so);
    /// results carry their trees in [`Node::canonicalize_in`]'s form, which differs only in the
    /// SDK's list fields.
    pub fn canonicalize(&mut self) -> bool {
        fn no_lists(_: &str) -> &'static [&'static str] {
            &[]
        }
        self.canonicalize_in("", no_lists)
    }

    /// [`Node::canonicalize`] of the element `name`, except that a child `lists(parent)` names is
    /// always an array, of one element too, in whatever form it came (a lone value, `[{…}]`, a
    /// repeated XML element; nested arrays flattened). In place; false when nothing is left (the
    /// node is then `Null`). The result's CI trees are this with
    /// [`crate::ci::lists::list_children`], so they have one shape whatever the number of outputs,
    /// and the same for XML and JSON events. `lists` is asked once per element, not per child.
    pub fn canonicalize_in(
        &mut self,
        name: &str,
        lists: fn(&str) -> &'static [&'static str],
    ) -> bool {
        let keep = match self {
            Node::Null => false,
            Node::Text(s) => !s.is_empty(),
            Node::Map(entries) => {
                let here = lists(name);
                entries.retain_mut(|(key, v)| {
                    if !here.is_empty() && here.contains(&key.as_ref()) {
                        v.canonicalize_list(key, lists)
                    } else {
                        v.canonicalize_in(key, lists)
                    }
                });
                !entries.is_empty()
            }
            // A repetition the SDK does not know as a list: CI's own rule.
            Node::List(items) => {
                items.retain_mut(|item| item.canonicalize_in(name, lists));
                if items.len() == 1 {
                    let only = items.pop().unwrap_or_default();
                    *self = only;
                    return true;
                }
                !items.is_empty()
            }
        };
        if !keep {
            *self = Node::Null;
        }
        keep
    }

    /// The list element `name`: always a `List` of its canonical, non-empty elements; false (and
    /// `Null`) when none is left.
    fn canonicalize_list(
        &mut self,
        name: &str,
        lists: fn(&str) -> &'static [&'static str],
    ) -> bool {
        fn flatten<'a>(node: Node<'a>, kept: &mut Vec<Node<'a>>) {
            match node {
                Node::List(inner) => inner.into_iter().for_each(|n| flatten(n, kept)),
                other => kept.push(other),
            }
        }
        let items = match self.take() {
            Node::List(items) => items,
            Node::Null => Vec::new(),
            one => vec![one],
        };
        let mut kept = Vec::with_capacity(items.len());
        for mut item in items {
            if item.canonicalize_in(name, lists) {
                flatten(item, &mut kept);
            }
        }
        if kept.is_empty() {
            return false;
        }
        *self = Node::List(kept);
        true
    }

    /// Every map's keys in byte order, recursively: CI's completion events list elements
    /// alphabetically.
    pub fn sort_keys(&mut self) {
        match self {
            Node::Map(entries) => {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                entries.iter_mut().for_each(|(_, v)| v.sort_keys());
            }
            Node::List(items) => items.iter_mut().for_each(Node::sort_keys),
            Node::Null | Node::Text(_) => {}
        }
    }

    /// This tree, owning every name and text (a tree kept beyond the bytes it was read from).
    pub fn into_owned(self) -> Node<'static> {
        let owned = |s: Cow<'a, str>| Cow::Owned(s.into_owned());
        match self {
            Node::Null => Node::Null,
            Node::Text(s) => Node::Text(owned(s)),
            Node::List(items) => Node::List(items.into_iter().map(Node::into_owned).collect()),
            Node::Map(entries) => Node::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (owned(k), v.into_owned()))
                    .collect(),
            ),
        }
    }

    /// A borrowed copy of this tree: names and texts lent, not copied (an owned tree read by code
    /// that takes its tree by value).
    pub fn view(&self) -> Node<'_> {
        fn lent(s: &str) -> Cow<'_, str> {
            Cow::Borrowed(s)
        }
        match self {
            Node::Null => Node::Null,
            Node::Text(s) => Node::Text(lent(s)),
            Node::List(items) => Node::List(items.iter().map(Node::view).collect()),
            Node::Map(entries) => {
                Node::Map(entries.iter().map(|(k, v)| (lent(k), v.view())).collect())
            }
        }
    }

    /// A borrowed view of a `Value` (numbers and booleans as their text).
    pub fn from_value(value: &'a Value) -> Node<'a> {
        match value {
            Value::Null => Node::Null,
            Value::String(s) => Node::Text(Cow::Borrowed(s)),
            Value::Number(n) => Node::Text(Cow::Owned(n.to_string())),
            Value::Bool(b) => Node::Text(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Array(items) => Node::List(items.iter().map(Node::from_value).collect()),
            Value::Object(map) => Node::Map(
                map.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Node::from_value(v)))
                    .collect(),
            ),
        }
    }

    /// The owned `Value` of this tree (texts as strings).
    pub fn into_value(self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Text(s) => Value::String(s.into_owned()),
            Node::List(items) => Value::Array(items.into_iter().map(Node::into_value).collect()),
            Node::Map(entries) => {
                let mut map = Map::with_capacity(entries.len());
                for (k, v) in entries {
                    map.insert(k.into_owned(), v.into_value());
                }
                Value::Object(map)
            }
        }
    }
}

impl<'a> From<&'a str> for Node<'a> {
    fn from(s: &'a str) -> Node<'a> {
        Node::Text(Cow::Borrowed(s))
    }
}

impl From<String> for Node<'_> {
    fn from(s: String) -> Self {
        Node::Text(Cow::Owned(s))
    }
}

/// What a repeated key means while a map is built.
#[derive(Clone, Copy)]
pub enum Repeat {
    /// XML: a repeated element is a list, in document order.
    Collect,
    /// JSON: the last value wins, at the key's first position (as `serde_json::Value` does).
    Replace,
}

/// Builds a map's entries with unique keys. Maps are small (CI's elements have a few dozen children),
/// so a repeated key is found by scanning; past `SCAN_LIMIT` (64) entries an index takes
/// over, so a hostile event with 100,000 keys cannot make it quadratic.
pub struct MapBuilder<'a> {
    entries: Vec<(Cow<'a, str>, Node<'a>)>,
    index: Option<HashMap<Cow<'a, str>, usize>>,
}

impl<'a> MapBuilder<'a> {
    const SCAN_LIMIT: usize = 64;

    pub fn new() -> MapBuilder<'a> {
        MapBuilder {
            entries: Vec::new(),
            index: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn insert(&mut self, key: Cow<'a, str>, value: Node<'a>, repeat: Repeat) {
        let found = match &self.index {
            Some(index) => index.get(&key).copied(),
            None => self.entries.iter().position(|(k, _)| *k == key),
        };
        match found {
            Some(i) => {
                let slot = &mut self.entries[i].1;
                match repeat {
                    Repeat::Replace => *slot = value,
                    // A child is never a list itself, so a list here is an earlier repetition.
                    Repeat::Collect => match slot {
                        Node::List(items) => items.push(value),
                        existing => {
                            let first = existing.take();
                            *existing = Node::List(vec![first, value]);
                        }
                    },
                }
            }
            None => {
                if self.entries.is_empty() {
                    self.entries.reserve(8);
                }
                if let Some(index) = &mut self.index {
                    index.insert(key.clone(), self.entries.len());
                }
                self.entries.push((key, value));
                if self.index.is_none() && self.entries.len() > Self::SCAN_LIMIT {
                    let index = self
                        .entries
                        .iter()
                        .enumerate()
                        .map(|(i, (k, _))| (k.clone(), i))
                        .collect();
                    self.index = Some(index);
                }
            }
        }
    }

    pub fn finish(self) -> Vec<(Cow<'a, str>, Node<'a>)> {
        self.entries
    }
}

impl Default for MapBuilder<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Written as the JSON it stands for (texts as strings).
impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => serializer.serialize_unit(),
            Node::Text(s) => serializer.serialize_str(s),
            Node::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

/// Read from JSON, borrowing every string that has no escapes.
impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node<'de>, E> {
        Ok(Node::Text(Cow::Borrowed(if b { "true" } else { "false" })))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Node<'de>, E> {
        Ok(Node::Text(Cow::Owned(n.to_string())))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Node<'de>, E> {
        Ok(Node::Text(Cow::Owned(n.to_string())))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Node<'de>, E> {
        // The text serde_json's own Number gives, so both readings of an event agree.
        let number = serde_json::Number::from_f64(n)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))?;
        Ok(Node::Text(Cow::Owned(number.to_string())))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::Text(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node<'de>, E> {
        Ok(Node::Text(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Node<'de>, E> {
        Ok(Node::Text(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        Node::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut builder = MapBuilder::new();
        while let Some(Key(key)) = map.next_key()? {
            let value = map.next_value()?;
            builder.insert(key, value, Repeat::Replace);
        }
        Ok(Node::Map(builder.finish()))
    }
}

/// A map key, borrowed when it has no escapes (serde's own `Cow<str>` always copies).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(text: &str) -> Node<'_> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn json_reads_as_value_does() {
        let text =
            r#"{"a": "x", "b": [1, -2, 1.5, true, null], "c": {"d": "\u00e9\n"}, "a": "last"}"#;
        let parsed = node(text);
        // Numbers and booleans are their text; a repeated key keeps its place and the last value.
        assert_eq!(
            parsed.clone().into_value(),
            json!({"a": "last", "b": ["1", "-2", "1.5", "true", null], "c": {"d": "é\n"}})
        );
        let Node::Map(entries) = &parsed else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0, "a");
        assert!(matches!(
            parsed.get("c").unwrap().get("d"),
            Some(Node::Text(Cow::Owned(_)))
        ));
        assert!(matches!(
            parsed.get("a"),
            Some(Node::Text(Cow::Borrowed("last")))
        ));
    }

    #[test]
    fn maps_past_the_scan_limit_read_alike() {
        let mut text = String::from("{");
        for i in 0..5000 {
            text.push_str(&format!("\"k{i}\": {i}, "));
        }
        text.push_str("\"k17\": \"again\", \"k4999\": \"end\"}");
        let parsed = node(&text);
        let Node::Map(entries) = &parsed else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 5000);
        assert_eq!(parsed.text_at(&["k17"]), Some("again"));
        assert_eq!(parsed.text_at(&["k4999"]), Some("end"));
        assert_eq!(parsed.text_at(&["k3"]), Some("3"));
    }

    #[test]
    fn canonical_form() {
        // Expected as CI writes its JSON events; compared as JSON text, so key order counts too.
        for (value, expected) in [
            (
                json!({"a": "", "b": null, "c": {"d": ""}, "e": [{"f": "1"}], "g": [[], "x", ""], "h": 0}),
                json!({"e": {"f": "1"}, "g": "x", "h": "0"}),
            ),
            (
                json!({"List": [{"a": ""}, {"a": "1"}, {"b": "2"}], "One": [[["deep"]]]}),
                json!({"List": [{"a": "1"}, {"b": "2"}], "One": "deep"}),
            ),
            (
                json!({
                    "Empty": "", "Null": null, "Num": 0, "Bool": true,
                    "One": [{"A": "1"}], "Two": [{"A": "1"}, "", {"A": "2"}],
                    "Hollow": {"X": "", "Y": {"Z": ""}}, "Keep": {"X": "", "Y": "y"}
                }),
                json!({
                    "Num": "0", "Bool": "true", "One": {"A": "1"}, "Two": [{"A": "1"}, {"A": "2"}],
                    "Keep": {"Y": "y"}
                }),
            ),
            // Nothing left, at any level: `Null`.
            (json!({"x": {"y": {"z": [null, ""]}}}), Value::Null),
            (json!({"A": ""}), Value::Null),
            (json!(""), Value::Null),
        ] {
            let mut n = Node::from_value(&value);
            assert_eq!(n.canonicalize(), !expected.is_null(), "{value}");
            assert_eq!(
                serde_json::to_string(&n).unwrap(),
                expected.to_string(),
                "{value}"
            );
        }
        let mut empty = node(r#"{"a": [null, {"b": ""}]}"#);
        assert!(!empty.canonicalize());
        assert_eq!(empty, Node::Null);
    }

    #[test]
    fn list_fields_are_always_arrays() {
        let lists = crate::ci::lists::list_children;
        let canonical_in = |name: &str, value: Value| {
            let mut n = Node::from_value(&value);
            let kept = n.canonicalize_in(name, lists);
            assert_eq!(kept, !matches!(n, Node::Null), "{value}");
            serde_json::to_string(&n).unwrap()
        };
        for (value, expected) in [
            // One, as XML and as JSON write it, and `[{…}]`: all one array.
            (
                json!({"OutputFile": {"ObjectName": "a.mp4", "Md5Info": {"Md5": "1"}}}),
                json!({"OutputFile": {"ObjectName": ["a.mp4"], "Md5Info": [{"Md5": "1"}]}}),
            ),
            (
                json!({"OutputFile": {"ObjectName": ["a.mp4"], "Md5Info": [{"Md5": "1", "ObjectName": "a.mp4"}]}}),
                json!({"OutputFile": {"ObjectName": ["a.mp4"], "Md5Info": [{"Md5": "1", "ObjectName": "a.mp4"}]}}),
            ),
            // Two; empties dropped, nested arrays flattened, all empty: absent.
            (
                json!({"OutputFile": {"ObjectName": ["0.jpg", "", ["1.jpg", ["2.jpg"]]], "Md5Info": [{"Md5": ""}], "Region": 1}}),
                json!({"OutputFile": {"ObjectName": ["0.jpg", "1.jpg", "2.jpg"], "Region": "1"}}),
            ),
            // Context is the parent: `Stream.Video` is a list, `Transcode.Video` is not; an element
            // the SDK does not model keeps CI's rule (one an object, `[{…}]` too, several an array).
            (
                json!({"Stream": {"Video": {"Index": "0"}, "Subtitle": ""}, "Transcode": {"Video": [{"Codec": "H.264"}]}, "X": [{"A": "1"}, {"A": "2"}]}),
                json!({"Stream": {"Video": [{"Index": "0"}]}, "Transcode": {"Video": {"Codec": "H.264"}}, "X": [{"A": "1"}, {"A": "2"}]}),
            ),
            // Inside a repeated element that is not a list itself, the children keep their rules.
            (
                json!({"Data": {"PlaceTags": [{"Tags": {"Tag": "Office"}}, {"Tags": [], "ClipFrameResult": "Other: 0.09"}]}}),
                json!({"Data": {"PlaceTags": [{"Tags": [{"Tag": "Office"}]}, {"ClipFrameResult": ["Other: 0.09"]}]}}),
            ),
        ] {
            assert_eq!(
                canonical_in("MediaResult", value.clone()),
                expected.to_string(),
                "{value}"
            );
        }
        // The root's own name is the first parent.
        assert_eq!(
            canonical_in(
                "Input",
                json!({"Object": "a", "CosHeaders": {"Key": "k", "Value": "v"}})
            ),
            r#"{"Object":"a","CosHeaders":[{"Key":"k","Value":"v"}]}"#
        );
        assert_eq!(
            canonical_in("Output", json!({"CosHeaders": {"Key": "k"}})),
            r#"{"CosHeaders":{"Key":"k"}}"#
        );
        assert_eq!(
            canonical_in("Input", json!({"CosHeaders": [{"Key": ""}]})),
            "null"
        );
        // XML and JSON forms of one element agree.
        let xml = crate::ci::xml::parse(
            "<R><OutputFile><ObjectName>a</ObjectName><Md5Info><Md5>1</Md5></Md5Info></OutputFile></R>",
        )
        .unwrap();
        let mut from_xml = xml.node;
        from_xml.canonicalize_in("MediaResult", lists);
        let mut from_json =
            node(r#"{"OutputFile": {"ObjectName": ["a"], "Md5Info": {"Md5": "1"}}}"#);
        from_json.canonicalize_in("MediaResult", lists);
        assert_eq!(from_xml, from_json);
    }

    #[test]
    fn keys_sort_at_every_level() {
        let mut n = node(r#"{"b": {"z": "1", "a": [{"y": "", "x": ""}]}, "a": "", "B": ""}"#);
        n.sort_keys();
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"B":"","a":"","b":{"a":[{"x":"","y":""}],"z":"1"}}"#
        );
    }

    #[test]
    fn edits_keep_document_order() {
        let mut n = node(r#"{"a": "1", "b": "2", "c": "3"}"#);
        n.insert("b", "two".into());
        n.insert("d", "4".into());
        assert_eq!(n.remove("a"), Some(Node::from("1")));
        assert_eq!(n.remove("a"), None);
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"b":"two","c":"3","d":"4"}"#
        );
        // Owned and lent copies are the same tree.
        let owned = n.clone().into_owned();
        assert_eq!(owned, n);
        assert_eq!(owned.view(), n);
    }

    #[test]
    fn lookups_are_one_or_several_tolerant() {
        let n = node(r#"[{"A": [{"B": "1"}, {"B": "2"}], "E": "", "N": null}]"#);
        assert_eq!(n.text_at(&["A", "B"]), Some("1"));
        assert_eq!(n.text_at(&["E"]), None);
        assert_eq!(n.text_at(&["N"]), None);
        assert_eq!(n.one().unwrap().get("A").unwrap().many().len(), 2);
        assert_eq!(Node::Null.many().len(), 0);
        // JSON scalars read as their text; an absent step is absent.
        let v = json!({"A": [{"B": "1"}, {"B": "2"}], "N": 0, "E": ""});
        let n = Node::from_value(&v);
        assert_eq!(n.text_at(&["A", "B"]), Some("1"));
        assert_eq!(n.get("A").unwrap().many().len(), 2);
        assert_eq!(n.text_at(&["N"]), Some("0"));
        assert_eq!(n.text_at(&["E"]), None);
        assert_eq!(n.text_at(&["Missing", "X"]), None);
    }

    #[test]
    fn serializes_as_json() {
        let text = r#"{"a":"x\"y","b":["1",null],"c":{}}"#;
        assert_eq!(serde_json::to_string(&node(text)).unwrap(), text);
    }
}
