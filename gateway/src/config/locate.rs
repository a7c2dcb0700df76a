//! Names the field at a byte offset of a TOML text, for errors that the
//! TOML parser reports only with a span (an unknown key, a value of the wrong
//! type, a missing field): `gateway.lisen`, `models[1].scaling.min_instances`.
//! A line-based reading of the table headers above the offset: enough for
//! the shapes a config has, and never wrong about the line.

use std::collections::HashMap;

/// The dotted path of the key (or table) at `offset` in `text`; `-` when
/// there is none (an error at the start of the file, say).
pub fn field_at(text: &str, offset: usize) -> String {
    match locate(text, offset) {
        (table, None) if !table.is_empty() => table,
        (table, Some(k)) if table.is_empty() => k,
        (table, Some(k)) => format!("{table}.{k}"),
        _ => "-".into(),
    }
}

/// The table path at `offset` (empty at the top level) and the key on its
/// line, if the line has one.
pub fn locate(text: &str, offset: usize) -> (String, Option<String>) {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let mut table = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    for line in text[..line_start].lines() {
        if let Some(header) = header(line) {
            table = resolve(header, &mut arrays);
        }
    }
    let line = &text[line_start..line_end];
    if let Some(header) = header(line) {
        return (resolve(header, &mut arrays), None);
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('#'));
    (table, key)
}

/// The 1-based line where `key` is set in `[table]`; 0 when it is not
/// written there (a default).
pub fn line_of(text: &str, table: &str, key: &str) -> usize {
    let mut current = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(h) = header(line) {
            current = resolve(h, &mut arrays);
            continue;
        }
        let k = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"'));
        if current == table && k == Some(key) {
            return i + 1;
        }
    }
    0
}

/// A table header, `[a.b]` or `[[a]]`: its name and whether it is an
/// array-of-tables entry.
fn header(line: &str) -> Option<(&str, bool)> {
    let t = line.split('#').next().unwrap_or("").trim();
    if let Some(inner) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
        return Some((inner.trim(), true));
    }
    let inner = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'))?;
    Some((inner.trim(), false))
}

/// The header's path with the index of every array-of-tables entry it is
/// under (`[models.scaling]` after the second `[[models]]` is
/// `models[1].scaling`); counts `[[a]]` entries in `arrays`.
fn resolve((name, is_array): (&str, bool), arrays: &mut HashMap<String, usize>) -> String {
    if is_array {
        let n = arrays.entry(name.to_string()).or_insert(0);
        *n += 1;
        return format!("{name}[{}]", *n - 1);
    }
    let mut best: Option<(&str, usize)> = None;
    for (array, count) in arrays.iter() {
        let under = name == array || name.starts_with(&format!("{array}."));
        if under && best.is_none_or(|(b, _)| array.len() > b.len()) {
            best = Some((array, *count));
        }
    }
    match best {
        Some((array, count)) => format!("{array}[{}]{}", count - 1, &name[array.len()..]),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::field_at;

    fn at(text: &str, needle: &str) -> String {
        field_at(text, text.find(needle).expect("needle in text"))
    }

    #[test]
    fn names_keys_under_their_tables() {
        let text = "top = 1\n[gateway]\nlisen = \"x\" # typo\n\n[defaults.scaling]\nmin = 2\n\
                    [[models]]\nname = \"a\"\n[[models]]\nname = \"b\"\ncolour = 1\n\
                    [models.scaling]\nmin_instances = \"one\"\n";
        assert_eq!(at(text, "top"), "top");
        assert_eq!(at(text, "lisen"), "gateway.lisen");
        assert_eq!(at(text, "min ="), "defaults.scaling.min");
        assert_eq!(at(text, "colour"), "models[1].colour");
        assert_eq!(at(text, "\"one\""), "models[1].scaling.min_instances");
        assert_eq!(at(text, "[[models]]\nname = \"b\""), "models[1]");
        assert_eq!(field_at("", 0), "-");
        assert_eq!(super::line_of(text, "gateway", "lisen"), 3);
        assert_eq!(super::line_of(text, "models[1]", "colour"), 11);
        assert_eq!(super::line_of(text, "gateway", "listen"), 0);
    }
}
