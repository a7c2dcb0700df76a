//! Structured outputs (OpenAI's `response_format: {"type": "json_schema"}`):
//! the answer is a JSON object that a JSON Schema admits. The schema is
//! compiled into nodes; a recognizer with a small stack of frames follows
//! the answer a byte at a time, as [`super::json::JsonState`] does for JSON
//! mode, and JSON mode is the schema of any object ([`Schema::any_object`]).
//!
//! The keywords held to are OpenAI's strict subset: `type` (one or
//! several), `properties`, `required`, `additionalProperties`, `items`,
//! `minItems`, `maxItems`, `enum`, `const`, `anyOf`, and `$ref` into
//! `$defs` or `definitions` (recursion included). An object's properties
//! come in the order the schema gives them, each optional one may be left
//! out, and no others are written. A keyword the answer could not be held
//! to (`pattern`, `minimum`, `format`, `oneOf`…) is refused, never
//! ignored, as are alternatives of `anyOf` that begin alike (two objects,
//! a string and a string enum): the recognizer picks an alternative by
//! its first byte.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::json::{Grammar, JsonState, Num, Space, StrAt};

/// Most frames open at once: values nested in objects and arrays. A
/// recursive schema's answer ends where it would go deeper.
pub const MAX_FRAMES: usize = 24;

/// Most properties in one object and values in one `enum` (each a bit of
/// a `u64` while it is matched).
pub const MAX_CHOICES: usize = 64;

/// A compiled schema.
#[derive(Debug)]
pub struct Schema {
    nodes: Vec<Node>,
    root: u16,
    /// Each node's least frames a value of it takes, nested values
    /// included ([`NEVER`]: no value is possible). A value begins only
    /// where its least fits under [`MAX_FRAMES`], so that the answer can
    /// always end: a recursive schema's answer goes no deeper than its
    /// way out allows.
    need: Vec<u32>,
}

/// The `need` of a node that admits no value.
const NEVER: u32 = u32::MAX;

#[derive(Debug, Clone)]
enum Node {
    /// Any JSON value, or any object.
    Any {
        object: bool,
    },
    /// A number; `integer`: no fraction or exponent.
    Number {
        integer: bool,
    },
    /// Any string.
    String,
    /// One of these values, each as compact JSON (booleans and null too).
    Literals(Vec<Vec<u8>>),
    Array {
        items: u16,
        min: u32,
        max: u32,
    },
    /// Properties in order: each key as a JSON string, its value's node,
    /// and whether it is required.
    Object {
        keys: Vec<Vec<u8>>,
        values: Vec<u16>,
        required: Vec<bool>,
    },
    /// One of these, told apart by their first byte.
    AnyOf(Vec<u16>),
    /// Nothing (the schema `false`).
    Never,
    /// Not compiled yet (a `$ref` target being compiled).
    Pending,
}

/// Keywords that describe and change nothing.
const ANNOTATIONS: [&str; 11] = [
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "strict",
];

/// Keywords held to.
const KEYWORDS: [&str; 13] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "$defs",
    "definitions",
];

impl Schema {
    /// Any one JSON object: JSON mode.
    pub fn any_object() -> Self {
        Schema {
            nodes: vec![Node::Any { object: true }],
            root: 0,
            need: vec![1],
        }
    }

    /// Compiles `schema`; the error says which keyword at which place
    /// (`#/properties/name`) cannot be held to, and why.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let mut compiler = Compiler {
            root: schema,
            nodes: Vec::new(),
            refs: HashMap::new(),
            places: HashMap::new(),
        };
        let root = compiler.node(schema, "#")?;
        let mut schema = Schema {
            nodes: compiler.nodes,
            root,
            need: Vec::new(),
        };
        if schema.nodes.iter().any(|n| matches!(n, Node::Pending)) {
            return Err("'$ref's refer to one another with nothing between".into());
        }
        match &schema.nodes[root as usize] {
            Node::Object { .. } | Node::Any { object: true } => {}
            _ => {
                return Err(
                    "the schema's root must be an object (\"type\": \"object\"), as OpenAI's \
                     structured outputs require"
                        .into(),
                )
            }
        }
        // anyOf's alternatives must begin apart.
        for (k, node) in schema.nodes.iter().enumerate() {
            if let Node::AnyOf(alternatives) = node {
                let mut seen = [false; 256];
                for &a in alternatives {
                    for b in 0..=255u8 {
                        if schema.begins(a, b, 0)? {
                            if seen[b as usize] {
                                let place = compiler.places.get(&(k as u16));
                                return Err(format!(
                                    "'anyOf' at {} has alternatives that begin alike \
                                     (with {:?}); only alternatives of different types \
                                     (a string or null, an object or an array…) are supported",
                                    place.map_or("#", String::as_str),
                                    b as char
                                ));
                            }
                            seen[b as usize] = true;
                        }
                    }
                }
            }
        }
        schema.need = schema.needs();
        match schema.need[root as usize] {
            NEVER => Err(
                "the schema admits no value: a required property or item admits \
                          nothing, or a recursion never ends"
                    .into(),
            ),
            need if need as usize > MAX_FRAMES => Err(format!(
                "the schema's values nest {need} deep at the least; at most {MAX_FRAMES} are \
                 supported"
            )),
            _ => Ok(schema),
        }
    }

    /// Each node's least frames (see `need`), to a fixed point: a
    /// recursion's least is that of its way out.
    fn needs(&self) -> Vec<u32> {
        let mut need = vec![NEVER; self.nodes.len()];
        loop {
            let mut changed = false;
            for (k, node) in self.nodes.iter().enumerate() {
                let least = match node {
                    Node::Any { .. } | Node::Number { .. } | Node::String | Node::Literals(_) => 1,
                    Node::Never | Node::Pending => NEVER,
                    Node::Array { min: 0, .. } => 1,
                    Node::Array { items, .. } => need[*items as usize].saturating_add(1),
                    Node::Object {
                        values, required, ..
                    } => values
                        .iter()
                        .zip(required)
                        .filter(|(_, &r)| r)
                        .map(|(&v, _)| need[v as usize])
                        .max()
                        .unwrap_or(0)
                        .saturating_add(1),
                    Node::AnyOf(alternatives) => alternatives
                        .iter()
                        .map(|&a| need[a as usize])
                        .min()
                        .unwrap_or(NEVER),
                };
                if least < need[k] {
                    need[k] = least;
                    changed = true;
                }
            }
            if !changed {
                return need;
            }
        }
    }

    /// Whether a value of `node` fits in `room` frames.
    fn fits(&self, node: u16, room: usize) -> bool {
        self.need[node as usize] as usize <= room
    }

    /// Whether a value of `node` can begin with `b`.
    fn begins(&self, node: u16, b: u8, depth: usize) -> Result<bool, String> {
        if depth > self.nodes.len() {
            return Err("'anyOf' or '$ref' refer to themselves with nothing between".into());
        }
        Ok(match &self.nodes[node as usize] {
            Node::Any { object: true } | Node::Object { .. } => b == b'{',
            Node::Any { object: false } => JsonState::any().step(b).is_some() && b > b' ',
            Node::Number { .. } => Num::start(b).is_some(),
            Node::String => b == b'"',
            Node::Literals(values) => values.iter().any(|v| v[0] == b),
            Node::Array { .. } => b == b'[',
            Node::AnyOf(alternatives) => {
                for &a in alternatives {
                    if self.begins(a, b, depth + 1)? {
                        return Ok(true);
                    }
                }
                false
            }
            Node::Never | Node::Pending => false,
        })
    }

    /// Before the answer.
    pub fn start(&self) -> SchemaState {
        let mut state = SchemaState {
            frames: [Frame::Value(0); MAX_FRAMES],
            len: 0,
            space: Space::default(),
        };
        state.push(Frame::Value(self.root));
        state
    }

    /// The state after `bytes`, or `None` where they cannot come here.
    pub fn feed(&self, state: &SchemaState, bytes: &[u8]) -> Option<SchemaState> {
        bytes.iter().try_fold(*state, |s, &b| self.step(&s, b))
    }

    /// Picks the alternative of `node` a value beginning with `b` is.
    fn pick(&self, node: u16, b: u8) -> Option<u16> {
        match &self.nodes[node as usize] {
            Node::AnyOf(alternatives) => alternatives.iter().find_map(|&a| {
                self.pick(a, b)
                    .filter(|&n| self.begins(n, b, 0) == Ok(true))
            }),
            _ => Some(node),
        }
    }

    /// The frame of a value of `node` that begins with `b` (not
    /// whitespace), where `room` frames are left for it.
    fn begin(&self, node: u16, b: u8, room: usize) -> Option<Frame> {
        let node = self.pick(node, b).filter(|&n| self.fits(n, room))?;
        Some(match &self.nodes[node as usize] {
            Node::Any { object } => {
                let start = if *object {
                    JsonState::new()
                } else {
                    JsonState::any()
                };
                Frame::Any(start.step(b)?)
            }
            Node::Number { integer } => Frame::Number {
                at: Num::start(b)?,
                integer: *integer,
            },
            Node::String if b == b'"' => Frame::Str(StrAt::Plain),
            Node::Literals(values) => Frame::Literal {
                node,
                candidates: mask(values.iter().map(|v| v[0] == b))?,
                at: 1,
            },
            Node::Array { .. } if b == b'[' => Frame::Array {
                node,
                count: 0,
                at: ArrayAt::Open,
            },
            Node::Object { .. } if b == b'{' => Frame::Object {
                node,
                next: 0,
                at: ObjectAt::Key { first: true },
            },
            _ => return None,
        })
    }

    /// The keys of an object of `node` that may come next: from `next` up
    /// to the first required one (those before it may be left out), the
    /// optional ones only where their values fit in `room` frames.
    fn next_keys(&self, node: u16, next: u16, room: usize) -> Option<u64> {
        let Node::Object {
            values, required, ..
        } = &self.nodes[node as usize]
        else {
            return None;
        };
        let next = next as usize;
        let last = required[next..]
            .iter()
            .position(|&r| r)
            .map_or(values.len(), |p| next + p + 1);
        mask(
            (0..values.len())
                .map(|k| (next..last).contains(&k) && (required[k] || self.fits(values[k], room))),
        )
    }

    /// Whether an object of `node` may end with properties from `next` on
    /// left out.
    fn may_close(&self, node: u16, next: u16) -> bool {
        match &self.nodes[node as usize] {
            Node::Object { required, .. } => !required[next as usize..].contains(&true),
            _ => false,
        }
    }
}

/// A `u64` with bit `k` set where the `k`th is true; `None` when none is.
fn mask(bits: impl Iterator<Item = bool>) -> Option<u64> {
    let m = bits
        .enumerate()
        .fold(0u64, |m, (k, b)| m | (u64::from(b) << k));
    (m != 0).then_some(m)
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    /// `$ref` targets compiled (or being compiled), by their path.
    refs: HashMap<String, u16>,
    /// Where each `anyOf` is in the schema, for its errors.
    places: HashMap<u16, String>,
}

impl Compiler<'_> {
    fn add(&mut self, node: Node) -> Result<u16, String> {
        let id = u16::try_from(self.nodes.len())
            .map_err(|_| "the schema has too many parts (over 65 535)".to_string())?;
        self.nodes.push(node);
        Ok(id)
    }

    fn node(&mut self, schema: &Value, path: &str) -> Result<u16, String> {
        let fields = match schema {
            Value::Bool(true) => return self.add(Node::Any { object: false }),
            Value::Bool(false) => return self.add(Node::Never),
            Value::Object(fields) => fields,
            other => {
                return Err(format!(
                    "{path} must be a schema (an object or a boolean), got {other}"
                ))
            }
        };
        for key in fields.keys() {
            if !KEYWORDS.contains(&key.as_str()) && !ANNOTATIONS.contains(&key.as_str()) {
                return Err(format!(
                    "'{key}' at {path} is not supported: the answer could not be held to it"
                ));
            }
        }
        let holding: Vec<&str> = fields
            .keys()
            .map(String::as_str)
            .filter(|k| KEYWORDS.contains(k) && !matches!(*k, "$defs" | "definitions"))
            .collect();
        let alone = |keyword: &str| -> Result<(), String> {
            match holding.iter().find(|k| **k != keyword) {
                Some(other) => Err(format!(
                    "'{other}' beside '{keyword}' at {path} is not supported: give '{keyword}' \
                     alone"
                )),
                None => Ok(()),
            }
        };
        if let Some(target) = fields.get("$ref") {
            alone("$ref")?;
            return self.reference(target, path);
        }
        if let Some(alternatives) = fields.get("anyOf") {
            alone("anyOf")?;
            let Value::Array(alternatives) = alternatives else {
                return Err(format!("'anyOf' at {path} must be an array of schemas"));
            };
            if alternatives.is_empty() {
                return Err(format!("'anyOf' at {path} is empty"));
            }
            let ids = alternatives
                .iter()
                .enumerate()
                .map(|(k, a)| self.node(a, &format!("{path}/anyOf/{k}")))
                .collect::<Result<Vec<_>, _>>()?;
            let id = self.add(Node::AnyOf(ids))?;
            self.places.insert(id, path.to_string());
            return Ok(id);
        }
        let types: Vec<&str> = match fields.get("type") {
            None => Vec::new(),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => ts
                .iter()
                .map(|t| {
                    t.as_str()
                        .ok_or_else(|| format!("'type' at {path} must be strings, got {t}"))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(format!(
                    "'type' at {path} must be a type name or an array of them, got {other}"
                ))
            }
        };
        for t in &types {
            if !matches!(
                *t,
                "object" | "array" | "string" | "number" | "integer" | "boolean" | "null"
            ) {
                return Err(format!("'type' at {path} names no JSON type: {t:?}"));
            }
        }
        if fields.contains_key("enum") || fields.contains_key("const") {
            return self.literals(fields, &types, path);
        }
        let types = if types.is_empty() {
            // No type: what the other keywords say, else anything.
            if fields.contains_key("properties") {
                vec!["object"]
            } else if fields.contains_key("items") {
                vec!["array"]
            } else {
                return self.add(Node::Any { object: false });
            }
        } else {
            types
        };
        // An integer is a number: both is a number.
        let types: Vec<&str> = if types.contains(&"number") {
            types.into_iter().filter(|t| *t != "integer").collect()
        } else {
            types
        };
        if types.len() > 1 {
            let ids = types
                .iter()
                .map(|t| self.typed(fields, t, path))
                .collect::<Result<Vec<_>, _>>()?;
            let id = self.add(Node::AnyOf(ids))?;
            self.places.insert(id, format!("{path}/type"));
            return Ok(id);
        }
        self.typed(fields, types[0], path)
    }

    /// A node of one type, from the keywords that apply to it.
    fn typed(&mut self, fields: &Map<String, Value>, t: &str, path: &str) -> Result<u16, String> {
        match t {
            "object" => self.object(fields, path),
            "array" => {
                let items = match fields.get("items") {
                    None => self.add(Node::Any { object: false })?,
                    Some(items) => self.node(items, &format!("{path}/items"))?,
                };
                let count = |key: &str| match fields.get(key) {
                    None => Ok(None),
                    Some(v) => v
                        .as_u64()
                        .map(|n| Some(n.min(u64::from(u32::MAX)) as u32))
                        .ok_or_else(|| format!("'{key}' at {path} must be a whole number")),
                };
                let min = count("minItems")?.unwrap_or(0);
                let max = count("maxItems")?.unwrap_or(u32::MAX);
                if min > max {
                    return Err(format!(
                        "'minItems' at {path} is more than 'maxItems': nothing is admitted"
                    ));
                }
                self.add(Node::Array { items, min, max })
            }
            "string" => self.add(Node::String),
            "number" => self.add(Node::Number { integer: false }),
            "integer" => self.add(Node::Number { integer: true }),
            "boolean" => self.add(Node::Literals(vec![b"true".to_vec(), b"false".to_vec()])),
            _ => self.add(Node::Literals(vec![b"null".to_vec()])),
        }
    }

    fn object(&mut self, fields: &Map<String, Value>, path: &str) -> Result<u16, String> {
        let properties = match fields.get("properties") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(format!("'properties' at {path} must be an object")),
        };
        let required: Vec<&str> = match fields.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r
                .iter()
                .map(|k| {
                    k.as_str()
                        .ok_or_else(|| format!("'required' at {path} must be strings, got {k}"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("'required' at {path} must be an array")),
        };
        let additional = match fields.get("additionalProperties") {
            None | Some(Value::Bool(true)) => true,
            Some(Value::Bool(false)) => false,
            // Extra properties are never written; a schema for them only
            // matters where there are no others.
            Some(_) if properties.is_some_and(|p| !p.is_empty()) => true,
            Some(_) => {
                return Err(format!(
                    "'additionalProperties' as a schema at {path} (a map of any keys) is not \
                     supported: give 'properties'"
                ))
            }
        };
        let Some(properties) = properties.filter(|p| !p.is_empty()) else {
            if let Some(key) = required.first() {
                return Err(format!(
                    "{key:?} is required at {path} but not among its 'properties'"
                ));
            }
            // Any object, or the empty one.
            return if additional {
                self.add(Node::Any { object: true })
            } else {
                self.add(Node::Object {
                    keys: Vec::new(),
                    values: Vec::new(),
                    required: Vec::new(),
                })
            };
        };
        if properties.len() > MAX_CHOICES {
            return Err(format!(
                "{path} has {} properties; at most {MAX_CHOICES} are supported",
                properties.len()
            ));
        }
        if let Some(key) = required.iter().find(|k| !properties.contains_key(**k)) {
            return Err(format!(
                "{key:?} is required at {path} but not among its 'properties'"
            ));
        }
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut needed = Vec::new();
        for (key, schema) in properties {
            let id = self.node(schema, &format!("{path}/properties/{}", pointer(key)))?;
            keys.push(serde_json::to_vec(key).expect("a string serializes"));
            values.push(id);
            needed.push(required.contains(&key.as_str()));
        }
        self.add(Node::Object {
            keys,
            values,
            required: needed,
        })
    }

    /// `enum` or `const`: the values (of the given types, where given).
    fn literals(
        &mut self,
        fields: &Map<String, Value>,
        types: &[&str],
        path: &str,
    ) -> Result<u16, String> {
        let values: Vec<&Value> = match (fields.get("enum"), fields.get("const")) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "'enum' and 'const' at {path} together are not supported"
                ))
            }
            (Some(Value::Array(values)), None) => values.iter().collect(),
            (Some(_), None) => return Err(format!("'enum' at {path} must be an array")),
            (None, Some(value)) => vec![value],
            (None, None) => unreachable!("called for enum or const"),
        };
        let of_type = |v: &Value| {
            types.is_empty()
                || types.iter().any(|t| match *t {
                    "object" => v.is_object(),
                    "array" => v.is_array(),
                    "string" => v.is_string(),
                    "number" => v.is_number(),
                    "integer" => v.is_i64() || v.is_u64(),
                    "boolean" => v.is_boolean(),
                    _ => v.is_null(),
                })
        };
        let mut texts: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| of_type(v))
            .map(|v| serde_json::to_vec(v).expect("a value serializes"))
            .collect();
        texts.dedup();
        if texts.is_empty() {
            return Err(format!(
                "'enum' or 'const' at {path} admits no value of its 'type'"
            ));
        }
        if texts.len() > MAX_CHOICES {
            return Err(format!(
                "'enum' at {path} has {} values; at most {MAX_CHOICES} are supported",
                texts.len()
            ));
        }
        self.add(Node::Literals(texts))
    }

    /// A `$ref` into the schema's `$defs` or `definitions`, or `#` itself.
    fn reference(&mut self, target: &Value, path: &str) -> Result<u16, String> {
        let Value::String(target) = target else {
            return Err(format!("'$ref' at {path} must be a string"));
        };
        if let Some(&id) = self.refs.get(target) {
            return Ok(id);
        }
        let schema = if target == "#" {
            self.root
        } else {
            let found = ["#/$defs/", "#/definitions/"].iter().find_map(|prefix| {
                let name = target.strip_prefix(prefix)?;
                self.root
                    .get(&prefix[2..prefix.len() - 1])?
                    .get(name.replace("~1", "/").replace("~0", "~"))
            });
            found.ok_or_else(|| {
                format!(
                    "'$ref' at {path} is {target:?}; only \"#\" and \"#/$defs/…\" or \
                     \"#/definitions/…\" of this schema are supported, and it must exist"
                )
            })?
        };
        // The target's node, reserved before it is compiled so that it can
        // refer to itself.
        let id = self.add(Node::Pending)?;
        self.refs.insert(target.clone(), id);
        let compiled = self.node(schema, target)?;
        self.nodes[id as usize] = self.nodes[compiled as usize].clone();
        if let Some(place) = self.places.get(&compiled).cloned() {
            self.places.insert(id, place);
        }
        Ok(id)
    }
}

/// A property's name as a JSON pointer token.
fn pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// One value being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// A value of this node comes (whitespace first).
    Value(u16),
    /// Inside any JSON value.
    Any(JsonState),
    Str(StrAt),
    Number {
        at: Num,
        integer: bool,
    },
    /// Inside one of a node's literal values: those still possible, and
    /// how many bytes are read.
    Literal {
        node: u16,
        candidates: u64,
        at: u16,
    },
    Array {
        node: u16,
        count: u32,
        at: ArrayAt,
    },
    /// Inside an object; `next`: its first property not yet written or
    /// passed over.
    Object {
        node: u16,
        next: u16,
        at: ObjectAt,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayAt {
    /// After `[`.
    Open,
    /// After `,`.
    Item,
    /// After an item.
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectAt {
    /// A key comes (or, `first`, the end).
    Key { first: bool },
    /// Inside a key: the properties it may still be, and the bytes read.
    InKey { candidates: u64, at: u16 },
    /// After the key of property `k`: `:`.
    Colon(u16),
    /// After a value: `,` or the end.
    After,
}

/// Where an answer held to a [`Schema`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaState {
    frames: [Frame; MAX_FRAMES],
    len: u8,
    /// The whitespace in a row just before here (bounded as JSON mode
    /// bounds it).
    space: Space,
}

impl SchemaState {
    /// Whether the answer is whole: only the end of the turn may follow.
    pub fn done(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, frame: Frame) -> Option<()> {
        let slot = self.frames.get_mut(self.len as usize)?;
        *slot = frame;
        self.len += 1;
        Some(())
    }

    fn top(&mut self) -> &mut Frame {
        &mut self.frames[self.len as usize - 1]
    }

    fn pop(&mut self) {
        self.len -= 1;
    }
}

impl Grammar for Schema {
    type State = SchemaState;

    fn step(&self, state: &SchemaState, b: u8) -> Option<SchemaState> {
        let mut s = *state;
        // A frame that ends only at the byte after it (a number, a literal
        // that is a prefix of another) hands the byte to the one below.
        loop {
            if s.len == 0 {
                return None;
            }
            let structural = matches!(
                s.top(),
                Frame::Value(_) | Frame::Array { .. } | Frame::Object { .. }
            );
            if structural {
                // The answer begins with its object, no whitespace first.
                if s.len == 1 && matches!(s.top(), Frame::Value(_)) && Space::is(b) {
                    return None;
                }
                if Space::is(b) {
                    // Not inside a key.
                    if !matches!(
                        s.top(),
                        Frame::Object {
                            at: ObjectAt::InKey { .. },
                            ..
                        }
                    ) {
                        s.space = s.space.add(b)?;
                        return Some(s);
                    }
                } else {
                    s.space = Space::default();
                }
            }
            match *s.top() {
                Frame::Value(node) => {
                    let room = MAX_FRAMES - (s.len as usize - 1);
                    // No value is whole at its first byte.
                    *s.top() = self.begin(node, b, room)?;
                    return Some(s);
                }
                Frame::Any(inner) => match inner.step(b) {
                    Some(inner) => {
                        *s.top() = Frame::Any(inner);
                        if inner.done() {
                            s.pop();
                        }
                        return Some(s);
                    }
                    None if inner.may_end() => s.pop(),
                    None => return None,
                },
                Frame::Str(at) => {
                    match at.step(b)? {
                        Some(at) => *s.top() = Frame::Str(at),
                        None => s.pop(),
                    }
                    return Some(s);
                }
                Frame::Number { at, integer } => {
                    let next = at
                        .step(b)
                        .filter(|_| !(integer && matches!(b, b'.' | b'e' | b'E')));
                    match next {
                        Some(at) => {
                            *s.top() = Frame::Number { at, integer };
                            return Some(s);
                        }
                        None if at.whole() => s.pop(),
                        None => return None,
                    }
                }
                Frame::Literal {
                    node,
                    candidates,
                    at,
                } => {
                    let Node::Literals(values) = &self.nodes[node as usize] else {
                        return None;
                    };
                    let i = at as usize;
                    let on = mask(
                        values
                            .iter()
                            .enumerate()
                            .map(|(k, v)| candidates >> k & 1 == 1 && v.get(i) == Some(&b)),
                    );
                    match on {
                        Some(on) => {
                            // Whole, and no other goes on: done now.
                            let ended = values
                                .iter()
                                .enumerate()
                                .all(|(k, v)| on >> k & 1 == 0 || v.len() == i + 1);
                            if ended {
                                s.pop();
                            } else {
                                *s.top() = Frame::Literal {
                                    node,
                                    candidates: on,
                                    at: at + 1,
                                };
                            }
                            return Some(s);
                        }
                        None => {
                            let whole = values
                                .iter()
                                .enumerate()
                                .any(|(k, v)| candidates >> k & 1 == 1 && v.len() == i);
                            if !whole {
                                return None;
                            }
                            s.pop();
                        }
                    }
                }
                Frame::Array { node, count, at } => {
                    let Node::Array { items, min, max } = self.nodes[node as usize] else {
                        return None;
                    };
                    // Another item only where one fits (inside this array).
                    let more = count < max && self.fits(items, MAX_FRAMES - s.len as usize);
                    match (at, b) {
                        (ArrayAt::Open | ArrayAt::After, b']') if count >= min => {
                            s.pop();
                            return Some(s);
                        }
                        (ArrayAt::After, b',') if more => {
                            *s.top() = Frame::Array {
                                node,
                                count,
                                at: ArrayAt::Item,
                            };
                            return Some(s);
                        }
                        (ArrayAt::Open | ArrayAt::Item, _) if more => {
                            *s.top() = Frame::Array {
                                node,
                                count: count + 1,
                                at: ArrayAt::After,
                            };
                            s.push(Frame::Value(items))?;
                            // The item's first byte, read by its frame.
                        }
                        _ => return None,
                    }
                }
                Frame::Object { node, next, at } => {
                    let Node::Object { keys, values, .. } = &self.nodes[node as usize] else {
                        return None;
                    };
                    // What a property's value has (it goes above this).
                    let room = MAX_FRAMES - s.len as usize;
                    let to = |at| Frame::Object { node, next, at };
                    match (at, b) {
                        (ObjectAt::Key { first: true } | ObjectAt::After, b'}')
                            if self.may_close(node, next) =>
                        {
                            s.pop();
                        }
                        (ObjectAt::Key { .. }, b'"') => {
                            let candidates = self.next_keys(node, next, room)?;
                            *s.top() = to(ObjectAt::InKey { candidates, at: 1 });
                        }
                        (ObjectAt::InKey { candidates, at }, _) => {
                            let i = at as usize;
                            let on = mask(keys.iter().enumerate().map(|(k, key)| {
                                candidates >> k & 1 == 1 && key.get(i) == Some(&b)
                            }))?;
                            // Keys are JSON strings: none is a prefix of
                            // another, so a whole one is the only one.
                            let whole = keys
                                .iter()
                                .enumerate()
                                .find(|(k, key)| on >> k & 1 == 1 && key.len() == i + 1);
                            *s.top() = match whole {
                                Some((k, _)) => Frame::Object {
                                    node,
                                    next: k as u16 + 1,
                                    at: ObjectAt::Colon(k as u16),
                                },
                                None => to(ObjectAt::InKey {
                                    candidates: on,
                                    at: at + 1,
                                }),
                            };
                        }
                        (ObjectAt::Colon(k), b':') => {
                            *s.top() = to(ObjectAt::After);
                            s.push(Frame::Value(values[k as usize]))?;
                        }
                        (ObjectAt::After, b',') if self.next_keys(node, next, room).is_some() => {
                            *s.top() = to(ObjectAt::Key { first: false });
                        }
                        _ => return None,
                    }
                    return Some(s);
                }
            }
        }
    }

    fn in_text(&self, state: &SchemaState) -> bool {
        match state.len.checked_sub(1).map(|k| &state.frames[k as usize]) {
            Some(Frame::Str(StrAt::Plain)) => true,
            Some(Frame::Any(inner)) => inner.in_text(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::models::chat::json::tests::{mutate, parse};
    use crate::models::chat::json::Tokens;

    fn accepts(schema: &Schema, text: &str) -> bool {
        schema
            .feed(&schema.start(), text.as_bytes())
            .is_some_and(|s| s.done())
    }

    fn compiled(schema: Value) -> Schema {
        Schema::compile(&schema).unwrap_or_else(|e| panic!("{schema}: {e}"))
    }

    /// A person: each type, an enum of strings and numbers, a const, a
    /// nullable field, bounds on an array, any value.
    fn person() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "email": {"type": ["string", "null"]},
                "tags": {"type": "array", "items": {"enum": ["a", "ab", 1, 12]},
                         "minItems": 1, "maxItems": 2},
                "score": {"type": "number"},
                "ok": {"type": "boolean"},
                "kind": {"const": "person"},
                "extra": {}
            },
            "required": ["name", "age", "email", "tags"],
            "additionalProperties": false
        })
    }

    #[test]
    fn answers_are_held_to_the_schema() {
        let person = compiled(person());
        for good in [
            r#"{"name":"Ann","age":30,"email":null,"tags":["a"]}"#,
            r#"{"name": "Ann", "age": -3, "email": "a@b", "tags": [12, "ab"], "score": 1.5e3}"#,
            r#"{"name":"","age":0,"email":null,"tags":[1],"ok":false,"kind":"person"}"#,
            "{\n  \"name\": \"é\",\n  \"age\": 1,\n  \"email\": null,\n  \"tags\": [\"a\"],\n  \"extra\": [1, {\"x\": null}]\n}",
            r#"{"name":"A","age":1,"email":null,"tags":["ab"],"extra":"x"}"#,
            r#"{"name":"A","age":1,"email":null,"tags":["ab"],"extra":-0.5}"#,
        ] {
            assert!(accepts(&person, good), "{good}");
            let v: Value = serde_json::from_str(good).expect("JSON");
            assert!(v.is_object());
        }
        for bad in [
            // Required left out, or in another order.
            r#"{"name":"Ann","email":null,"tags":["a"]}"#,
            r#"{"age":30,"name":"Ann","email":null,"tags":["a"]}"#,
            // Wrong types, values not in the enum, too many or few items.
            r#"{"name":"Ann","age":30.5,"email":null,"tags":["a"]}"#,
            r#"{"name":"Ann","age":3e1,"email":null,"tags":["a"]}"#,
            r#"{"name":1,"age":30,"email":null,"tags":["a"]}"#,
            r#"{"name":"Ann","age":30,"email":null,"tags":["b"]}"#,
            r#"{"name":"Ann","age":30,"email":null,"tags":[123]}"#,
            r#"{"name":"Ann","age":30,"email":null,"tags":[]}"#,
            r#"{"name":"Ann","age":30,"email":null,"tags":["a","a","a"]}"#,
            r#"{"name":"Ann","age":30,"email":false,"tags":["a"]}"#,
            r#"{"name":"Ann","age":30,"email":null,"tags":["a"],"kind":"cat"}"#,
            // A property twice, one not in the schema, a trailing comma.
            r#"{"name":"Ann","name":"Bo","age":30,"email":null,"tags":["a"]}"#,
            r#"{"name":"Ann","age":30,"email":null,"tags":["a"],"x":1}"#,
            r#"{"name":"Ann","age":30,"email":null,"tags":["a"],}"#,
            r#"{"name":"Ann","age":30,"email":null,"tags":["a"]} "#,
        ] {
            assert!(!accepts(&person, bad), "{bad}");
        }
    }

    /// Whether `v` is an instance of `schema`, judged on the parsed value
    /// (not a byte at a time), for the keywords these tests use.
    fn valid(schema: &Value, v: &Value) -> bool {
        if let Some(c) = schema.get("const") {
            return c == v;
        }
        if let Some(e) = schema.get("enum") {
            return e.as_array().is_some_and(|e| e.contains(v));
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return true,
        };
        types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "string" => v.is_string(),
            // JSON Schema's: a number with no fraction (-0 is one).
            "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0),
            "number" => v.is_number(),
            "array" => v.as_array().is_some_and(|items| {
                let n = items.len() as u64;
                schema["minItems"].as_u64().is_none_or(|m| n >= m)
                    && schema["maxItems"].as_u64().is_none_or(|m| n <= m)
                    && items.iter().all(|i| valid(&schema["items"], i))
            }),
            "object" => v.as_object().is_some_and(|o| {
                let props = schema["properties"].as_object().expect("properties");
                let closed = schema["additionalProperties"] == json!(false);
                schema["required"]
                    .as_array()
                    .is_none_or(|r| r.iter().all(|k| o.contains_key(k.as_str().unwrap_or(""))))
                    && o.iter().all(|(k, x)| match props.get(k) {
                        Some(p) => valid(p, x),
                        None => !closed,
                    })
            }),
            _ => false,
        })
    }

    #[test]
    fn near_misses_held_to_the_schema_are_instances_of_it() {
        let raw = person();
        let schema = compiled(raw.clone());
        let bases = [
            r#"{"name":"Ann","age":30,"email":null,"tags":["a"]}"#,
            r#"{"name": "B", "age": -3, "email": null, "tags": [12, "ab"], "score": 1.5e3, "kind": "person", "extra": [1]}"#,
            r#"{"name":"","age":0,"email":"x","tags":[1,"a"],"score":-0}"#,
        ];
        let alphabet: &[u8] = b"{}[]\":,.-0123456789eEnulabgsx ";
        let mut rng = super::super::engine::Rng::new(7);
        let mut pick = |n: usize| ((rng.next_f32() * n as f32) as usize).min(n - 1);
        let (mut held, mut refused) = (0, 0);
        for _ in 0..100_000 {
            let mut text = bases[pick(bases.len())].as_bytes().to_vec();
            let edits = 1 + pick(2);
            mutate(&mut text, edits, alphabet, &mut pick);
            let ours = schema
                .feed(&schema.start(), &text)
                .is_some_and(|s| s.done());
            let text = String::from_utf8_lossy(&text);
            if ours {
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("held {text:?}, which is not JSON: {e}"));
                assert!(
                    valid(&raw, &v),
                    "held {text:?}, which the schema does not admit"
                );
                held += 1;
            } else {
                refused += 1;
            }
        }
        assert!(
            held > 5_000 && refused > 5_000,
            "{held} held, {refused} refused"
        );
        for base in bases {
            let v: Value = serde_json::from_str(base).expect("JSON");
            assert!(valid(&raw, &v) && accepts(&schema, base), "{base}");
        }
    }

    #[test]
    fn references_nest_and_recurse() {
        let tree = compiled(json!({
            "$defs": {"node": {"type": "object",
                "properties": {"v": {"type": "integer"},
                               "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                "required": ["v"]}},
            "$ref": "#/$defs/node"
        }));
        assert!(accepts(
            &tree,
            r#"{"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4}]}]}"#
        ));
        assert!(!accepts(&tree, r#"{"v":1,"kids":[{"w":2}]}"#));
        // Too deep for the frames: the answer cannot go on.
        let mut deep = String::new();
        for _ in 0..MAX_FRAMES {
            deep.push_str(r#"{"v":1,"kids":["#);
        }
        assert!(tree.feed(&tree.start(), deep.as_bytes()).is_none());
        // Any object, as JSON mode.
        let any = Schema::any_object();
        assert!(accepts(&any, r#"{"a": [1, {"b": null}]}"#));
        assert!(!accepts(&any, "[]"));
        assert!(!accepts(&any, " {}"), "the object comes first");
        assert!(accepts(&compiled(json!({"type": "object"})), "{}"));
        assert!(accepts(
            &compiled(json!({"type": "object", "properties": {}, "additionalProperties": false})),
            "{}"
        ));
        assert!(!accepts(
            &compiled(json!({"type": "object", "properties": {}, "additionalProperties": false})),
            r#"{"a":1}"#
        ));
    }

    #[test]
    fn an_answer_can_always_end_however_deep_it_goes() {
        // From any state reached, some byte comes next until the answer is
        // whole: random walks through each schema, taking bytes among
        // JSON's structural ones where they may come (else any that may).
        let schemas = [
            // A linked list: its recursion ends only with null.
            json!({"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#"},
                   {"type": "null"}]}}, "required": ["next"]}),
            // Optional recursion; a tree of arrays; numbers in nested lists.
            json!({"type": "object", "properties": {"n": {"$ref": "#"}}}),
            json!({"$defs": {"t": {"type": "object", "properties": {
                       "kids": {"type": "array", "items": {"$ref": "#/$defs/t"}}},
                       "required": ["kids"]}}, "$ref": "#/$defs/t"}),
            json!({"$defs": {"v": {"type": ["number", "array"], "items": {"$ref": "#/$defs/v"}}},
                   "type": "object", "properties": {"v": {"$ref": "#/$defs/v"}},
                   "required": ["v"]}),
            // An item that admits nothing: only empty arrays.
            json!({"type": "object", "properties": {"a": {"type": "array", "items": false},
                   "b": false}, "required": ["a"]}),
        ];
        let structural: &[u8] = b"{}[]\":,0123456789-ntruefalsx ";
        let mut rng = super::super::engine::Rng::new(11);
        let mut pick = |n: usize| ((rng.next_f32() * n as f32) as usize).min(n - 1);
        for raw in schemas {
            let schema = compiled(raw.clone());
            let (mut deepest, mut whole) = (0, 0);
            for _ in 0..40 {
                let mut state = schema.start();
                let mut text = Vec::new();
                while !state.done() && text.len() < 3000 {
                    let can = |bytes: &mut dyn Iterator<Item = u8>| -> Vec<u8> {
                        bytes
                            .filter(|&b| schema.step(&state, b).is_some())
                            .collect()
                    };
                    let mut next = can(&mut structural.iter().copied());
                    if next.is_empty() {
                        next = can(&mut (0..=255u8));
                    }
                    assert!(
                        !next.is_empty(),
                        "{raw}: a dead end after {:?}",
                        String::from_utf8_lossy(&text)
                    );
                    let b = next[pick(next.len())];
                    state = schema.step(&state, b).expect("allowed");
                    text.push(b);
                    deepest = deepest.max(state.len);
                }
                if state.done() {
                    let v = parse(&text).expect("JSON");
                    assert!(shaped(&raw, &v), "{raw}: {v}");
                    whole += 1;
                }
            }
            assert!(whole > 0, "{raw}: no walk ended");
            assert!(deepest as usize <= MAX_FRAMES);
        }
        // The list goes as deep as the frames allow, then only null.
        let list = compiled(json!({"type": "object", "properties": {"next": {"anyOf": [
            {"$ref": "#"}, {"type": "null"}]}}, "required": ["next"]}));
        let mut state = list.start();
        let mut depth = 0;
        while let Some(deeper) = list.feed(&state, br#"{"next":"#) {
            state = deeper;
            depth += 1;
        }
        // Each object's `next` takes a frame above it: the last null too.
        assert_eq!(depth, MAX_FRAMES - 1);
        let closed = [b"null".to_vec(), vec![b'}'; depth]].concat();
        assert!(list.feed(&state, &closed).is_some_and(|s| s.done()));
    }

    /// Whether `v` has the shape of its walk's schema, checked on the
    /// parsed value: lists end in null, trees have only kids, numbers in
    /// lists, arrays of nothing empty.
    fn shaped(schema: &Value, v: &Value) -> bool {
        fn list(v: &Value) -> bool {
            v.is_null() || v.get("next").is_some_and(list)
        }
        fn optional(v: &Value) -> bool {
            v.as_object()
                .is_some_and(|o| o.iter().all(|(k, x)| k == "n" && optional(x)))
        }
        fn tree(v: &Value) -> bool {
            v.as_object().map(|o| o.len()) == Some(1)
                && v["kids"].as_array().is_some_and(|k| k.iter().all(tree))
        }
        fn nested(v: &Value) -> bool {
            v.is_number() || v.as_array().is_some_and(|a| a.iter().all(nested))
        }
        let props = &schema["properties"];
        if props.get("next").is_some() {
            v.get("next").is_some_and(list)
        } else if props.get("n").is_some() {
            optional(v)
        } else if props.get("v").is_some() {
            v.get("v").is_some_and(nested)
        } else if props.get("a").is_some() {
            v["a"] == json!([]) && v.get("b").is_none()
        } else {
            tree(v)
        }
    }

    /// An object whose one property nests 26 arrays of at least one item.
    fn deep() -> Value {
        let mut v = json!({"type": "null"});
        for _ in 0..26 {
            v = json!({"type": "array", "minItems": 1, "items": v});
        }
        json!({"type": "object", "properties": {"a": v}, "required": ["a"]})
    }

    #[test]
    fn what_cannot_be_held_to_is_refused_with_its_place() {
        for (schema, says) in [
            (json!({"type": "string"}), "root must be an object"),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}),
                "'pattern' at #/properties/a is not supported",
            ),
            (
                json!({"type": "object", "properties": {"a": {"anyOf": [
                    {"type": "object"}, {"type": "object", "properties": {"b": {}}}]}}}),
                "begin alike",
            ),
            (
                json!({"type": "object", "properties": {"a": {"anyOf": [
                    {"type": "integer"}, {"type": "number"}]}}}),
                "'anyOf' at #/properties/a has alternatives that begin alike",
            ),
            (
                json!({"type": "object", "required": ["a"]}),
                "\"a\" is required",
            ),
            (
                json!({"type": "object", "additionalProperties": {"type": "string"}}),
                "a map",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
                "must exist",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "integer", "enum": ["x"]}}}),
                "admits no value",
            ),
            (
                json!({"type": "object", "properties": {"a": false}, "required": ["a"]}),
                "admits no value",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}),
                "a recursion never ends",
            ),
            (deep(), "nest 28 deep at the least"),
            (json!({"type": "thing"}), "names no JSON type"),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/b"}},
                       "$defs": {"b": {"$ref": "#/$defs/c"}, "c": {"$ref": "#/$defs/b"}}}),
                "refer to one another",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "array", "minItems": 3, "maxItems": 2}}}),
                "more than 'maxItems'",
            ),
        ] {
            let e = Schema::compile(&schema).expect_err("refused");
            assert!(e.contains(says), "{schema}: {e}");
        }
    }

    #[test]
    fn the_tokens_allowed_under_a_schema_are_those_whose_bytes_can_follow() {
        let schema = compiled(json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "n": {"type": "integer"},
                           "c": {"enum": ["red", "green"]}, "any": {}},
            "required": ["name"]
        }));
        let vocab: Vec<&[u8]> = [
            "{", "{\"", "\"", "\"name", "name", "\":", ":", " ", "\"n", "\",", ",", "1", "12",
            "1.", "-", "\"c", "\"re", "red", "d\"", "gre", "}", "\"}", "[", "]", "a", "é", "\\",
            "null", "\"any\":", "e",
        ]
        .iter()
        .map(|t| t.as_bytes())
        .collect();
        let tokens = Tokens::from_tokens(vocab.iter().enumerate().map(|(id, b)| (id as u32, *b)));
        for prefix in [
            "",
            "{",
            "{\"",
            "{\"name\"",
            "{\"name\":",
            "{\"name\": \"x",
            "{\"name\":\"x\"",
            "{\"name\":\"x\",",
            "{\"name\":\"x\",\"n\":1",
            "{\"name\":\"x\",\"c\":\"re",
            "{\"name\":\"x\",\"any\":[",
            "{\"name\":\"x\",\"any\":\"a",
            "{\"name\":\"x\",\"any\":1",
        ] {
            let state = schema
                .feed(&schema.start(), prefix.as_bytes())
                .unwrap_or_else(|| panic!("{prefix:?} is a valid prefix"));
            let mut got = Vec::new();
            tokens.allowed(&schema, state, |id| got.push(id));
            got.sort_unstable();
            let want: Vec<u32> = (0..vocab.len() as u32)
                .filter(|&id| schema.feed(&state, vocab[id as usize]).is_some())
                .collect();
            assert_eq!(got, want, "after {prefix:?}");
        }
    }
}
