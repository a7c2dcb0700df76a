//! JSON mode (OpenAI's `response_format: {"type": "json_object"}`): the
//! answer is one JSON object (RFC 8259), whatever the model would rather
//! say. A byte-level recognizer follows the text generated so far; before
//! each token, every token whose bytes cannot continue it is left out.
//!
//! The recognizer's state is a few bytes (the open objects and arrays are
//! bits of a word), so that trying every token of the vocabulary from it is
//! cheap: the tokens are kept sorted, and each one steps only through the
//! bytes it does not share with the one before ([`Tokens::allowed`]).

use super::ChatTokenizer;

/// Deepest nesting of objects and arrays (the open ones are bits of a
/// `u64`).
pub const MAX_DEPTH: u8 = 64;

/// Most whitespace bytes in a row. A small model held to JSON can otherwise
/// spend its whole answer on blank lines (OpenAI warns of the same): a run
/// of whitespace is spaces and tabs with at most one line break (`\n`, no
/// `\r`), which leaves room for any indentation a reader wants, as
/// llama.cpp's JSON grammar does.
pub const MAX_SPACE: u8 = 24;

/// Where the recognizer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Before the object, which comes first: `{`.
    Start,
    /// A value comes (after `:`, or `,` in an array).
    Value,
    /// Just after `{`: a key or `}`.
    FirstKey,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// Just after `[`: a value or `]`.
    FirstItem,
    /// After a value in an object or array: `,` or its end.
    Next,
    /// In a string (`key`: an object's key).
    Str { key: bool, at: StrAt },
    /// In a number.
    Number(Num),
    /// In `true`, `false` or `null`: the bytes still to come.
    Word(&'static [u8]),
    /// The object is whole: only the end of the turn may follow.
    Done,
}

/// Where a string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrAt {
    /// Characters, `\` or the closing quote.
    Plain,
    /// After `\`.
    Escape,
    /// In `\uXXXX`, this many hex digits to come; `after_d` just after
    /// `\uD`, where 8 to F would make a UTF-16 surrogate (left out: strict
    /// parsers refuse one alone, and the model can write the character
    /// itself).
    Hex { left: u8, after_d: bool },
    /// In a UTF-8 character: `left` bytes to come, the next one from `low`
    /// to `high` (which excludes overlong forms and surrogates).
    Utf8 { left: u8, low: u8, high: u8 },
}

impl StrAt {
    /// Where the string is after `b`: `Some(None)` when `b` closes it.
    pub(super) fn step(self, b: u8) -> Option<Option<StrAt>> {
        Some(Some(match (self, b) {
            (StrAt::Plain, b'"') => return Some(None),
            (StrAt::Plain, b'\\') => StrAt::Escape,
            (StrAt::Plain, 0x20..=0x7f) => StrAt::Plain,
            (StrAt::Plain, 0xc2..=0xdf) => utf8(1, 0x80, 0xbf),
            (StrAt::Plain, 0xe0) => utf8(2, 0xa0, 0xbf),
            (StrAt::Plain, 0xed) => utf8(2, 0x80, 0x9f),
            (StrAt::Plain, 0xe1..=0xef) => utf8(2, 0x80, 0xbf),
            (StrAt::Plain, 0xf0) => utf8(3, 0x90, 0xbf),
            (StrAt::Plain, 0xf1..=0xf3) => utf8(3, 0x80, 0xbf),
            (StrAt::Plain, 0xf4) => utf8(3, 0x80, 0x8f),
            (StrAt::Utf8 { left, low, high }, _) if (low..=high).contains(&b) => {
                if left == 1 {
                    StrAt::Plain
                } else {
                    utf8(left - 1, 0x80, 0xbf)
                }
            }
            (StrAt::Escape, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => StrAt::Plain,
            (StrAt::Escape, b'u') => StrAt::Hex {
                left: 4,
                after_d: false,
            },
            (StrAt::Hex { left, after_d }, _) if b.is_ascii_hexdigit() => {
                // \uD800–\uDFFF: a surrogate.
                if after_d && !matches!(b, b'0'..=b'7') {
                    return None;
                }
                match left {
                    1 => StrAt::Plain,
                    _ => StrAt::Hex {
                        left: left - 1,
                        after_d: left == 4 && matches!(b, b'd' | b'D'),
                    },
                }
            }
            _ => return None,
        }))
    }
}

/// Where a number is (JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)?
/// ([eE] [+-]? [0-9]+)?`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    /// Where a number that begins with `b` is.
    pub(super) fn start(b: u8) -> Option<Num> {
        match b {
            b'-' => Some(Num::Minus),
            b'0' => Some(Num::Zero),
            b'1'..=b'9' => Some(Num::Int),
            _ => None,
        }
    }

    /// Whether the number may end here.
    pub(super) fn whole(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }

    pub(super) fn step(self, b: u8) -> Option<Num> {
        Some(match (self, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, b'1'..=b'9') => Num::Int,
            (Num::Int, b'0'..=b'9') => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::E,
            (Num::E, b'+' | b'-') => Num::ESign,
            (Num::E | Num::ESign | Num::Exp, b'0'..=b'9') => Num::Exp,
            _ => return None,
        })
    }
}

/// A recognizer of one JSON object, fed a byte at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonState {
    lex: Lex,
    /// The open containers, innermost in the low bit: 1 an object, 0 an
    /// array.
    open: u64,
    depth: u8,
    space: Space,
}

/// The whitespace in a row just before here, bounded ([`MAX_SPACE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Space {
    bytes: u8,
    /// Whether they hold a line break.
    line: bool,
}

impl Space {
    /// Whether `b` is whitespace as the answer may write it.
    pub(super) fn is(b: u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\n')
    }

    /// The run with whitespace byte `b` added, or `None` where the run may
    /// not go on.
    pub(super) fn add(self, b: u8) -> Option<Space> {
        if self.bytes >= MAX_SPACE || (b == b'\n' && self.line) {
            return None;
        }
        Some(Space {
            bytes: self.bytes + 1,
            line: self.line || b == b'\n',
        })
    }
}

impl Default for JsonState {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonState {
    /// Before anything.
    pub fn new() -> Self {
        JsonState {
            lex: Lex::Start,
            open: 0,
            depth: 0,
            space: Space::default(),
        }
    }

    /// Before any one JSON value (not only an object), whitespace first.
    pub fn any() -> Self {
        JsonState {
            lex: Lex::Value,
            ..Self::new()
        }
    }

    /// Whether the object is whole (the turn may end, and nothing else may
    /// come).
    pub fn done(&self) -> bool {
        self.lex == Lex::Done
    }

    /// Whether the value is whole here: done, or a number that may end
    /// (only the byte after it tells that it did).
    pub fn may_end(&self) -> bool {
        match self.lex {
            Lex::Done => true,
            Lex::Number(n) => self.depth == 0 && n.whole(),
            _ => false,
        }
    }

    /// The state after `b`, or `None` where `b` cannot come here.
    pub fn step(self, b: u8) -> Option<JsonState> {
        let mut s = self;
        match s.lex {
            Lex::Str { key, at } => {
                match at.step(b)? {
                    Some(at) => s.lex = Lex::Str { key, at },
                    None => s.lex = if key { Lex::Colon } else { s.after_value() },
                }
                Some(s)
            }
            Lex::Number(n) => match n.step(b) {
                Some(n) => {
                    s.lex = Lex::Number(n);
                    Some(s)
                }
                // The number ends at the first byte that cannot go on
                // with it, which then comes after it.
                None if n.whole() => {
                    s.lex = s.after_value();
                    s.step(b)
                }
                None => None,
            },
            Lex::Word(rest) => {
                let (&first, rest) = rest.split_first()?;
                if b != first {
                    return None;
                }
                s.lex = if rest.is_empty() {
                    s.after_value()
                } else {
                    Lex::Word(rest)
                };
                Some(s)
            }
            Lex::Done => None,
            Lex::Start if b == b'{' => s.open(true),
            Lex::Start => None,
            _ if Space::is(b) => {
                s.space = s.space.add(b)?;
                Some(s)
            }
            lex => {
                s.space = Space::default();
                match (lex, b) {
                    (Lex::Value | Lex::FirstItem, _) => s.value(b),
                    (Lex::FirstKey | Lex::Key, b'"') => {
                        s.lex = Lex::Str {
                            key: true,
                            at: StrAt::Plain,
                        };
                        Some(s)
                    }
                    (Lex::FirstKey, b'}') | (Lex::Next, b'}') if s.in_object() => s.close(),
                    (Lex::Next, b']') if !s.in_object() => s.close(),
                    (Lex::Next, b',') => {
                        s.lex = if s.in_object() { Lex::Key } else { Lex::Value };
                        Some(s)
                    }
                    (Lex::Colon, b':') => {
                        s.lex = Lex::Value;
                        Some(s)
                    }
                    _ => None,
                }
            }
        }
    }

    /// The start of a value (or, just after `[`, the array's end).
    fn value(mut self, b: u8) -> Option<JsonState> {
        self.lex = match b {
            b'{' => return self.open(true),
            b'[' => return self.open(false),
            b']' if self.lex == Lex::FirstItem => return self.close(),
            b'"' => Lex::Str {
                key: false,
                at: StrAt::Plain,
            },
            b'-' | b'0'..=b'9' => Lex::Number(Num::start(b)?),
            b't' => Lex::Word(b"rue"),
            b'f' => Lex::Word(b"alse"),
            b'n' => Lex::Word(b"ull"),
            _ => return None,
        };
        Some(self)
    }

    fn in_object(&self) -> bool {
        self.open & 1 == 1
    }

    fn open(mut self, object: bool) -> Option<JsonState> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.open = (self.open << 1) | u64::from(object);
        self.depth += 1;
        self.lex = if object {
            Lex::FirstKey
        } else {
            Lex::FirstItem
        };
        Some(self)
    }

    fn close(mut self) -> Option<JsonState> {
        self.open >>= 1;
        self.depth -= 1;
        self.lex = self.after_value();
        Some(self)
    }

    /// Where a value that just ended leaves the text.
    fn after_value(&self) -> Lex {
        if self.depth == 0 {
            Lex::Done
        } else {
            Lex::Next
        }
    }

    /// Whether this is inside a string, between characters.
    pub fn in_text(&self) -> bool {
        matches!(
            self.lex,
            Lex::Str {
                at: StrAt::Plain,
                ..
            }
        )
    }

    /// The state after `bytes`, or `None` where they cannot come here.
    pub fn feed(self, bytes: &[u8]) -> Option<JsonState> {
        bytes.iter().try_fold(self, |s, &b| s.step(b))
    }
}

fn utf8(left: u8, low: u8, high: u8) -> StrAt {
    StrAt::Utf8 { left, low, high }
}

/// What the answer is held to, a byte at a time. Its strings must step as
/// [`JsonState`]'s do: a token that is text inside one of its strings
/// ([`Grammar::in_text`]) leaves the state as it was.
pub trait Grammar {
    /// Where the answer is: copied at every byte tried.
    type State: Copy;

    /// The state after `b`, or `None` where `b` cannot come here.
    fn step(&self, state: &Self::State, b: u8) -> Option<Self::State>;

    /// Whether `state` is inside a string, between characters.
    fn in_text(&self, state: &Self::State) -> bool;
}

/// Any one JSON object ([`JsonState`]).
pub struct AnyObject;

impl Grammar for AnyObject {
    type State = JsonState;

    fn step(&self, state: &JsonState, b: u8) -> Option<JsonState> {
        state.step(b)
    }

    fn in_text(&self, state: &JsonState) -> bool {
        state.in_text()
    }
}

/// A vocabulary's plain tokens as JSON mode tries them.
pub struct Tokens {
    all: Sorted,
    /// The tokens that, inside a string, are text and leave it where it
    /// was (no quote, no backslash, whole UTF-8 characters): nearly the
    /// whole vocabulary, allowed there without a step.
    text: Vec<u32>,
    /// The others, tried inside a string.
    rest: Sorted,
}

impl Tokens {
    /// The tokenizer's tokens, control tokens left out (never allowed in
    /// JSON; the end of the turn is decided apart).
    pub fn new(tokenizer: &ChatTokenizer) -> Self {
        let plain = (0..tokenizer.vocab_size() as u32)
            .filter(|&id| !tokenizer.is_control(id))
            .filter_map(|id| Some((id, tokenizer.token_bytes(id)?)))
            .filter(|(_, bytes)| !bytes.is_empty());
        Self::from_tokens(plain)
    }

    /// From `(id, bytes)` pairs.
    pub fn from_tokens<'a>(tokens: impl Iterator<Item = (u32, &'a [u8])>) -> Self {
        let tokens: Vec<(u32, &[u8])> = tokens.collect();
        // In a string, a token that ends where it started steps through
        // no state but the string's own (a quote or a backslash would
        // leave it), so it is text in every string.
        let in_string = JsonState::new().feed(b"{\"").expect("the start of a key");
        let (text, rest): (Vec<_>, Vec<_>) = tokens
            .iter()
            .partition(|(_, bytes)| in_string.feed(bytes) == Some(in_string));
        Tokens {
            all: Sorted::new(tokens.clone()),
            text: text.into_iter().map(|(id, _)| id).collect(),
            rest: Sorted::new(rest),
        }
    }

    /// Calls `allow` with every token that can come after `state`.
    pub fn allowed<G: Grammar>(&self, grammar: &G, state: G::State, mut allow: impl FnMut(u32)) {
        if grammar.in_text(&state) {
            self.text.iter().for_each(|&id| allow(id));
            self.rest.allowed(grammar, state, allow);
        } else {
            self.all.allowed(grammar, state, allow);
        }
    }
}

/// Tokens sorted by their bytes, each with how many leading bytes it shares
/// with the one before.
struct Sorted {
    ids: Vec<u32>,
    /// Token `k`'s bytes are `bytes[starts[k]..starts[k + 1]]`.
    bytes: Vec<u8>,
    starts: Vec<usize>,
    shared: Vec<usize>,
    longest: usize,
}

impl Sorted {
    fn new(mut tokens: Vec<(u32, &[u8])>) -> Self {
        tokens.sort_unstable_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
        let mut table = Sorted {
            ids: Vec::with_capacity(tokens.len()),
            bytes: Vec::new(),
            starts: Vec::with_capacity(tokens.len() + 1),
            shared: Vec::with_capacity(tokens.len()),
            longest: 0,
        };
        let mut previous: &[u8] = &[];
        for (id, bytes) in tokens {
            let shared = previous
                .iter()
                .zip(bytes)
                .take_while(|(a, b)| a == b)
                .count();
            table.ids.push(id);
            table.starts.push(table.bytes.len());
            table.bytes.extend_from_slice(bytes);
            table.shared.push(shared);
            table.longest = table.longest.max(bytes.len());
            previous = bytes;
        }
        table.starts.push(table.bytes.len());
        table
    }

    /// Calls `allow` with every token that can come after `state`. Each
    /// token steps from the state its shared prefix with the one before
    /// reached; a prefix found impossible skips every token that follows
    /// with it.
    fn allowed<G: Grammar>(&self, grammar: &G, state: G::State, mut allow: impl FnMut(u32)) {
        // `states[j]`: the state after the first j bytes of the last token
        // stepped through, known for j ≤ `known`.
        let mut states = vec![state; self.longest + 1];
        let mut known = 0;
        // A prefix length at which the last token stepped through failed.
        let mut dead = usize::MAX;
        for (k, &id) in self.ids.iter().enumerate() {
            let shared = self.shared[k];
            known = known.min(shared);
            if shared >= dead {
                continue;
            }
            dead = usize::MAX;
            let bytes = &self.bytes[self.starts[k]..self.starts[k + 1]];
            let mut whole = true;
            for (j, &b) in bytes.iter().enumerate().skip(known) {
                match grammar.step(&states[j], b) {
                    Some(next) => states[j + 1] = next,
                    None => {
                        known = j;
                        dead = j + 1;
                        whole = false;
                        break;
                    }
                }
            }
            if whole {
                known = bytes.len();
                allow(id);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn accepts(text: &[u8]) -> bool {
        JsonState::new().feed(text).is_some_and(|s| s.done())
    }

    /// Whether `text` is a JSON object to serde_json (an independent,
    /// strict parser) within this recognizer's limits on whitespace.
    fn serde_accepts(text: &[u8]) -> bool {
        // Runs of whitespace (JSON's four bytes; a line break is never in
        // a valid string, spaces there are few in these tests): short, one
        // line break at most, no carriage return.
        let within_limits = text.split(|b| !b" \t\n\r".contains(b)).all(|run| {
            run.len() <= MAX_SPACE as usize
                && run.iter().filter(|&&b| b == b'\n').count() <= 1
                && !run.contains(&b'\r')
        });
        // The object comes first, and nothing follows it.
        let around = [text.first(), text.last()]
            .iter()
            .any(|b| b.is_some_and(|b| b" \t\n\r".contains(b)));
        let parsed = parse(text).is_ok_and(|v| v.is_object());
        within_limits && !around && parsed
    }

    /// `text` parsed by serde_json, which refuses numbers beyond f64's
    /// range that JSON's grammar allows: every digit of an exponent
    /// becomes 0 first (a digit for a digit, wherever it is, changes
    /// nothing else).
    pub(in crate::models::chat) fn parse(text: &[u8]) -> serde_json::Result<serde_json::Value> {
        let mut exponent = false;
        let tamed: Vec<u8> = text
            .iter()
            .map(|&b| {
                if exponent && b.is_ascii_digit() {
                    return b'0';
                }
                exponent = matches!(b, b'e' | b'E') || (exponent && matches!(b, b'+' | b'-'));
                b
            })
            .collect();
        serde_json::from_slice(&tamed)
    }

    /// Makes `edits` random changes to `text`: a byte of `alphabet` put in
    /// place of one, one dropped, or one added (`pick(n)`: below n).
    pub(in crate::models::chat) fn mutate(
        text: &mut Vec<u8>,
        edits: usize,
        alphabet: &[u8],
        pick: &mut impl FnMut(usize) -> usize,
    ) {
        for _ in 0..edits {
            let at = pick(text.len() + 1);
            let byte = alphabet[pick(alphabet.len())];
            match pick(3) {
                0 if at < text.len() => text[at] = byte,
                1 if at < text.len() => {
                    text.remove(at);
                }
                _ => text.insert(at, byte),
            }
        }
    }

    #[test]
    fn objects_are_recognized_as_serde_json_parses_them() {
        let good: [&[u8]; 12] = [
            b"{}",
            b"{ \n }",
            br#"{"a":1}"#,
            br#"{"a": [1, -0.5e+3, 2E7, true, false, null, "x", {}, []]}"#,
            br#"{"k":"\"\\\/\b\f\n\r\t\u00e9\uD7FF\uE000"}"#,
            "{\"é\": \"日本語 🎉\"}".as_bytes(),
            br#"{"a":{"b":{"c":[[[]]]}}}"#,
            br#"{"":0}"#,
            br#"{"n":-0}"#,
            br#"{"n":10.25}"#,
            br#"{"a":[{"b":null},{"c":[]}]}"#,
            b"{\n\t\"a\" :\t1 ,\"b\":2\n}",
        ];
        for text in good {
            assert!(accepts(text), "{:?}", String::from_utf8_lossy(text));
            assert!(serde_accepts(text), "{:?}", String::from_utf8_lossy(text));
        }
        let bad: [&[u8]; 26] = [
            b"",
            b" {}",
            b"{}\n",
            b"{\r\n}",
            b"{\n\n}",
            b"[]",
            b"1",
            br#""a""#,
            b"{",
            br#"{"a":1,}"#,
            br#"{"a":[1,]}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":.5}"#,
            br#"{"a":1e}"#,
            br#"{"a":+1}"#,
            br#"{"a":tru}"#,
            br#"{a:1}"#,
            br#"{"a" 1}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\uD800"}"#,
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\xc3\"}",
            b"{\"a\":\"\xe0\x80\x80\"}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{} {}",
        ];
        for text in bad {
            assert!(!accepts(text), "{:?}", String::from_utf8_lossy(text));
            assert!(!serde_accepts(text), "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn near_misses_are_judged_as_serde_json_judges_them() {
        // Objects with a byte or two changed, dropped or added, and short
        // random texts: every one judged the same by both.
        let bases: [&[u8]; 6] = [
            br#"{"a": [1, -0.5e+3, true, null], "b": {"c": "\u00e9x"}}"#,
            br#"{"k":"\"\n","n":10.25E-2,"f":false,"e":[]}"#,
            "{\"é\": [{}, \"日本\"]}".as_bytes(),
            b"{ \"x\" :\n  0 }",
            br#"{"a":{"b":[[-1]]}}"#,
            br#"{"":"\/"}"#,
        ];
        let alphabet: &[u8] = b"{}[]\":,.-+0123456789eEtrufalsn\\u/ x\n\r\t\xc3\xa9\xed\xa0";
        let mut rng = super::super::engine::Rng::new(42);
        let mut pick = |n: usize| ((rng.next_f32() * n as f32) as usize).min(n - 1);
        let (mut objects, mut refused) = (0, 0);
        for round in 0..200_000 {
            let mut text = if round % 4 == 0 {
                (0..1 + pick(12))
                    .map(|_| alphabet[pick(alphabet.len())])
                    .collect()
            } else {
                bases[pick(bases.len())].to_vec()
            };
            let edits = pick(3);
            mutate(&mut text, edits, alphabet, &mut pick);
            let ours = accepts(&text);
            assert_eq!(
                ours,
                serde_accepts(&text),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
            objects += usize::from(ours);
            refused += usize::from(!ours);
        }
        assert!(
            objects > 20_000 && refused > 20_000,
            "{objects} objects, {refused} refused"
        );
    }

    #[test]
    fn a_prefix_is_refused_exactly_where_no_object_can_follow_it() {
        // A text is refused at its first impossible byte, never before.
        let text = br#"{"a": [1, 2}"#;
        let at = (0..=text.len())
            .find(|&n| JsonState::new().feed(&text[..n]).is_none())
            .expect("refused");
        assert_eq!(&text[..at], br#"{"a": [1, 2}"#);
        assert!(JsonState::new().feed(br#"{"a": [1, 2"#).is_some());
        // Nothing after the object, not even whitespace.
        let done = JsonState::new().feed(b"{}").expect("object");
        assert!(done.done() && done.step(b' ').is_none());
    }

    #[test]
    fn nesting_and_whitespace_are_bounded() {
        let deep = |n: usize| {
            let mut t = b"{\"a\":".to_vec();
            t.extend(std::iter::repeat_n(b'[', n - 1));
            t
        };
        assert!(JsonState::new().feed(&deep(MAX_DEPTH as usize)).is_some());
        assert!(JsonState::new()
            .feed(&deep(MAX_DEPTH as usize + 1))
            .is_none());
        let spaces = vec![b' '; MAX_SPACE as usize];
        let s = JsonState::new()
            .feed(b"{")
            .and_then(|s| s.feed(&spaces))
            .expect("spaces");
        assert!(s.step(b' ').is_none());
        let s = JsonState::new().feed(b"{\n ").expect("a line");
        assert!(s.step(b'\n').is_none());
        assert!(s.feed(b"\"a\":\n").is_some(), "one line break per run");
        // Whitespace inside a string is text, not counted.
        let long = [b"{\"a\":\"".as_slice(), &[b' '; 100], b"\"}"].concat();
        assert!(accepts(&long));
    }

    #[test]
    fn the_tokens_allowed_are_those_whose_bytes_can_follow() {
        let vocab: Vec<Vec<u8>> = [
            "{", "{\"", "}", "\"", "\":", "a", "ab", "abc", " ", "  ", "\n", ",", "1", "12", "1.",
            ".5", "e", "true", "tr", "null", "[", "]", "],", "}}", "\\", "\\u", "\\ud8", "\"}",
            "é",
        ]
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .chain([b"\xc3".to_vec(), b"\xa9".to_vec()])
        .collect();
        let tokens = Tokens::from_tokens(
            vocab
                .iter()
                .enumerate()
                .map(|(id, b)| (id as u32, b.as_slice())),
        );
        let prefixes: [&[u8]; 11] = [
            b"",
            b"{",
            b"{\"a",
            b"{\"a\": [\"x",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":[",
            b"{\"a\":\"\\",
            b"{\"a\":\"\xc3",
            b"{\"a\":[1]",
            b"{\"a\":{}}",
        ];
        for prefix in prefixes {
            let state = JsonState::new().feed(prefix).expect("a valid prefix");
            let mut got = Vec::new();
            tokens.allowed(&AnyObject, state, |id| got.push(id));
            got.sort_unstable();
            let want: Vec<u32> = (0..vocab.len() as u32)
                .filter(|&id| state.feed(&vocab[id as usize]).is_some())
                .collect();
            assert_eq!(got, want, "after {:?}", String::from_utf8_lossy(prefix));
        }
    }
}
