//! The configuration reference (`docs/configuration.md`) and the commented
//! example configuration (`herald config --example`), both generated from the
//! config types themselves — their doc comments and their defaults, read
//! through their JSON schema (schemars) — so neither can drift from the code.

use serde_json::{Map, Value};

use crate::config::Config;

/// One configuration key.
struct Key {
    name: String,
    kind: String,
    default: Option<String>,
    doc: String,
}

/// A TOML table of the configuration (or the top level, `name: None`).
struct Section {
    name: Option<String>,
    /// `[[name]]`: a list of tables.
    array: bool,
    doc: String,
    keys: Vec<Key>,
}

fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or(Value::Null)
}

fn def<'a>(schema: &'a Value, reference: &str) -> Option<&'a Value> {
    let name = reference.strip_prefix("#/$defs/")?;
    schema.get("$defs")?.get(name)
}

/// The `$ref` a property points at, directly, as a list's items, or as the
/// non-null half of an optional.
fn reference(prop: &Value) -> Option<&str> {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        return Some(r);
    }
    if let Some(r) = prop.pointer("/items/$ref").and_then(Value::as_str) {
        return Some(r);
    }
    prop.get("anyOf")?
        .as_array()?
        .iter()
        .find_map(|v| v.get("$ref").and_then(Value::as_str))
}

/// A table's definition: one with properties of its own.
fn table<'a>(schema: &'a Value, prop: &Value) -> Option<&'a Map<String, Value>> {
    def(schema, reference(prop)?)?
        .get("properties")?
        .as_object()
}

/// What a key takes, in words: `string`, `integer`, `a | b`, `list of string`.
fn kind(schema: &Value, prop: &Value) -> String {
    if let Some(d) = reference(prop).and_then(|r| def(schema, r)) {
        let values: Vec<String> = d
            .get("oneOf")
            .or_else(|| d.get("enum"))
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| v.get("const").unwrap_or(v).as_str())
                    .map(|v| format!("`{v}`"))
                    .collect()
            })
            .unwrap_or_default();
        if !values.is_empty() {
            return values.join(" \\| ");
        }
    }
    let types: Vec<&str> = match prop.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let optional = types.contains(&"null");
    let main = types.into_iter().find(|t| *t != "null").unwrap_or("value");
    let word = match main {
        "array" => format!(
            "list of {}",
            kind(schema, prop.get("items").unwrap_or(&Value::Null))
        ),
        "integer" | "number" => "number".to_owned(),
        other => other.to_owned(),
    };
    if optional {
        format!("{word} (optional)")
    } else {
        word
    }
}

/// A default as it is written in TOML; none for an unset optional.
fn toml_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(toml::Value::String(s.clone()).to_string()),
        Value::Array(items) => Some(format!(
            "[{}]",
            items
                .iter()
                .filter_map(toml_value)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        other => Some(other.to_string()),
    }
}

fn doc(v: &Value) -> String {
    v.get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A table's keys. `defaults` is the table's default as its parent sets it
/// (`[notifications]` keeps messages 30 days where `[history]` keeps them
/// one, though both are the same type): it beats the type's own default.
fn keys(schema: &Value, props: &Map<String, Value>, defaults: Option<&Value>) -> Vec<Key> {
    props
        .iter()
        .filter(|(_, p)| table(schema, p).is_none())
        .map(|(name, p)| Key {
            name: name.clone(),
            kind: kind(schema, p),
            default: defaults
                .and_then(|d| d.get(name))
                .or_else(|| p.get("default"))
                .and_then(toml_value),
            doc: doc(p),
        })
        .collect()
}

fn sections() -> Vec<Section> {
    let schema = schema();
    let Some(top) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut out = vec![Section {
        name: None,
        array: false,
        doc: doc(&schema),
        keys: keys(&schema, top, None),
    }];
    for (name, prop) in top {
        if let Some(props) = table(&schema, prop) {
            out.push(Section {
                name: Some(name.clone()),
                array: prop.get("type").and_then(Value::as_str) == Some("array"),
                doc: doc(prop),
                keys: keys(&schema, props, prop.get("default")),
            });
        }
    }
    out
}

/// `docs/configuration.md`.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the configuration types by `herald config --reference`; \
         CI fails when this file is stale. Values come from the built-in defaults, \
         then the TOML file (`--config`, `HERALD_CONFIG`), then `HERALD_<SECTION>_<KEY>` \
         environment variables (e.g. `HERALD_LIMITS_BURST=200`, lists comma-separated), \
         then flags. Durations are written like `30s`, `500ms`, `5m`, `1h`. \
         `herald config --example` prints a commented configuration with every default.\n",
    );
    for section in sections() {
        let title = match (&section.name, section.array) {
            (None, _) => "Top level".to_owned(),
            (Some(n), true) => format!("`[[{n}]]`"),
            (Some(n), false) => format!("`[{n}]`"),
        };
        out.push_str(&format!("\n## {title}\n\n"));
        if section.name.is_some() && !section.doc.is_empty() {
            out.push_str(&format!("{}\n\n", section.doc));
        }
        out.push_str("| key | type | default | what it does |\n|---|---|---|---|\n");
        for k in &section.keys {
            let default = k
                .default
                .as_deref()
                .map_or("—".to_owned(), |d| format!("`{}`", d.replace('|', "\\|")));
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.name,
                k.kind,
                default,
                k.doc.replace('|', "\\|")
            ));
        }
    }
    out
}

/// A commented configuration with every key at its default, which
/// `herald serve --config` accepts as it is (it binds loopback only).
pub fn example_toml() -> String {
    let mut out = String::from(
        "# Herald configuration: every key, at its default. Generated by\n\
         # `herald config --example`; see docs/configuration.md.\n\
         # Before exposing Herald beyond loopback, set auth.hmac_secret (or\n\
         # auth.public_key_file) and auth.api_keys, and read SECURITY.md.\n",
    );
    for section in sections() {
        out.push('\n');
        let prefix = match (&section.name, section.array) {
            (None, _) => "",
            // A list of tables has no default entry: show one, commented.
            (Some(n), true) => {
                out.push_str(&format!("# {}\n# [[{n}]]\n", section.doc));
                "# "
            }
            (Some(n), false) => {
                if !section.doc.is_empty() {
                    out.push_str(&format!("# {}\n", section.doc));
                }
                // `tls` is optional as a whole: shown, commented.
                if n == "tls" {
                    out.push_str(&format!("# [{n}]\n"));
                    "# "
                } else {
                    out.push_str(&format!("[{n}]\n"));
                    ""
                }
            }
        };
        for k in &section.keys {
            out.push_str(&format!("{prefix}# {} ({})\n", k.doc, k.kind));
            match &k.default {
                Some(d) if prefix.is_empty() => out.push_str(&format!("{} = {d}\n", k.name)),
                Some(d) => out.push_str(&format!("{prefix}{} = {d}\n", k.name)),
                None => out.push_str(&format!("# {} =\n", k.name)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_names_every_section_and_documents_every_key() {
        let md = reference_markdown();
        for section in [
            "`[auth]`",
            "`[limits]`",
            "`[heartbeat]`",
            "`[engine]`",
            "`[history]`",
            "`[notifications]`",
            "`[log]`",
            "`[tls]`",
            "`[[namespaces]]`",
        ] {
            assert!(md.contains(section), "{section} missing");
        }
        assert!(md.contains("| `outbound_queue_bytes` | number | `1048576` |"));
        assert!(md.contains("| `format` | `text` \\| `json` | `\"text\"` |"));
        for line in md.lines().filter(|l| l.starts_with("| `")) {
            assert!(!line.ends_with("|  |"), "undocumented key: {line}");
        }
    }

    #[test]
    fn the_example_parses_to_the_defaults() {
        let example = example_toml();
        let parsed: Config =
            toml::from_str(&example).expect("the example is valid TOML for Config");
        let defaults = Config::default();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&defaults).unwrap(),
            "the example sets every key to its default"
        );
        assert!(example.contains("[limits]\n"));
        assert!(example.contains("# [[namespaces]]\n"));
    }
}
