//! Where in the file a problem is: the line of the key a validation message names
//! (`lifecycle[0].paths`, `plugin[1].allow_networks[2]`, `sync.poll_interval`), found
//! by walking the file's parsed TOML, which keeps the position of every key and
//! value. A key that is absent from the file (a missing required one, a default that
//! is wrong in combination) falls back to the nearest part of its path that is there.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// The parsed file, for looking up lines.
pub(super) struct Lines {
    doc: Option<ImDocument<String>>,
    text: String,
}

enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

impl Lines {
    /// Parses `text` (a file that does not parse gives no lines).
    pub(super) fn new(text: &str) -> Self {
        Lines {
            doc: ImDocument::parse(text.to_owned()).ok(),
            text: text.to_owned(),
        }
    }

    /// `problem` with the line of the key it names in front (`line 7: lifecycle[0]…`),
    /// or as it is when the key cannot be found.
    pub(super) fn locate(&self, problem: String) -> String {
        let key = problem.split(':').next().unwrap_or("");
        match self.line_of(key) {
            Some(line) => format!("line {line}: {problem}"),
            None => problem,
        }
    }

    /// The 1-based line of the deepest part of `key` present in the file.
    fn line_of(&self, key: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        // `sql[0] ("db")`: the name in brackets is for the reader.
        let key = key.split(" (").next()?.trim();
        if key.is_empty() || key.contains(' ') {
            return None;
        }
        let mut node = Node::Table(doc.as_table());
        let mut span: Option<Range<usize>> = None;
        for segment in key.split('.') {
            let (name, indices) = split_indices(segment)?;
            let Some((found, key_span)) = child(&node, name) else {
                break;
            };
            span = key_span.or(span);
            node = found;
            for i in indices {
                let Some((found, item_span)) = index(&node, i) else {
                    return span.map(|s| self.line_at(s.start));
                };
                span = item_span.or(span);
                node = found;
            }
        }
        span.map(|s| self.line_at(s.start))
    }

    fn line_at(&self, offset: usize) -> usize {
        self.text
            .get(..offset)
            .map_or(0, |before| before.matches('\n').count())
            + 1
    }
}

/// `allow_networks[1][2]` → (`allow_networks`, [1, 2]).
fn split_indices(segment: &str) -> Option<(&str, Vec<usize>)> {
    let (name, mut rest) = segment
        .split_once('[')
        .map_or((segment, ""), |(n, r)| (n, r));
    let mut indices = Vec::new();
    while !rest.is_empty() {
        let (number, after) = rest.split_once(']')?;
        indices.push(number.parse().ok()?);
        rest = after.strip_prefix('[').unwrap_or(after);
    }
    Some((name, indices))
}

fn child<'a>(node: &Node<'a>, name: &str) -> Option<(Node<'a>, Option<Range<usize>>)> {
    let (key, item) = match node {
        Node::Table(t) => t.get_key_value(name)?,
        Node::Item(item) => item.as_table_like()?.get_key_value(name)?,
        Node::Value(Value::InlineTable(t)) => t.get_key_value(name)?,
        Node::Value(_) => return None,
    };
    Some((Node::Item(item), key.span().or_else(|| item.span())))
}

fn index<'a>(node: &Node<'a>, i: usize) -> Option<(Node<'a>, Option<Range<usize>>)> {
    match node {
        Node::Item(Item::ArrayOfTables(tables)) => {
            let table = tables.get(i)?;
            Some((Node::Table(table), table.span()))
        }
        Node::Item(Item::Value(Value::Array(values))) | Node::Value(Value::Array(values)) => {
            let value = values.get(i)?;
            Some((Node::Value(value), value.span()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
[sync]
poll_interval = \"soon\"

[[plugin]]
name = \"a\"

[[plugin]]
name = \"b\"
allow_networks = [
  \"10.0.0.0/8\",
  \"10.0.0.0/33\",
]

[storage]
kek = { source = \"transit\" }
";

    #[test]
    fn problems_are_prefixed_with_the_line_of_their_key() {
        let lines = Lines::new(TEXT);
        let at = |p: &str| lines.locate(p.to_owned());
        assert_eq!(
            at("sync.poll_interval: bad"),
            "line 2: sync.poll_interval: bad"
        );
        assert_eq!(at("plugin[1].name: bad"), "line 8: plugin[1].name: bad");
        assert_eq!(
            at("plugin[1].allow_networks[1]: bad"),
            "line 11: plugin[1].allow_networks[1]: bad"
        );
        assert_eq!(
            at("storage.kek.source: bad"),
            "line 15: storage.kek.source: bad"
        );
    }

    #[test]
    fn a_missing_key_points_at_the_nearest_part_that_is_there() {
        let lines = Lines::new(TEXT);
        // `plugin[0]` has no `sha256`: the table header is the best place to look.
        assert!(lines
            .locate("plugin[0].sha256: missing".to_owned())
            .starts_with("line 4: "));
        assert_eq!(
            lines.locate("unknown field `readz`".to_owned()),
            "unknown field `readz`"
        );
    }
}
