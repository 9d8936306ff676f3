//! A structure-aware AFL++ custom mutator for the fuzz targets whose inputs are JSON: `config`, `jwks`, `feed`
//! and `admin` (whose first byte picks the body type, the JSON after it).
//!
//! AFL++'s own mutations work on bytes. Long runs of `admin` and `config` went flat for an hour and then found
//! 25 edges at once, each time from a new combination of valid fields (an issuer key set mixing an EC key with
//! an RSA key whose `e` is empty; an RSA key with an unknown `use` beside keys of unknown types): byte flips
//! rarely keep a document valid while they move a whole member from one input into another. This mutator
//! parses the input and a second queue entry AFL hands it, and changes the tree: grafts a subtree of the other
//! input, adds, drops, renames, duplicates and swaps members, and replaces values with the edge values of
//! their kind or with values the two inputs already hold. Its output is always valid JSON behind the input's
//! own prefix bytes; AFL's byte-level havoc still runs after it, so nothing the bytes reach is lost.
//!
//! The C entry points AFL++ loads (`afl_custom_*`, see AFL++'s `docs/custom_mutators.md`) are in [`ffi`];
//! [`mutate`] is the whole mutator as a safe function. `cargo xtask fuzz` builds it and points
//! `AFL_CUSTOM_MUTATOR_LIBRARY` at it for those targets.

use serde_json::{Map, Number, Value};

/// How many bytes before the JSON an input may carry: the `admin` target's body selector.
const MAX_PREFIX: usize = 1;

/// Nodes of a tree the mutator looks at: a larger document is mutated in its first this many nodes (in
/// depth-first order), which keeps one mutation to microseconds.
const MAX_NODES: usize = 4096;

/// Values the pools keep of each kind.
const MAX_POOL: usize = 256;

/// A small, fast generator (xorshift64*): the mutator needs spread, not secrecy, and its runs must repeat
/// from AFL's seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from AFL's seed (any value, zero included).
    pub fn new(seed: u64) -> Self {
        // SplitMix64's finaliser spreads neighbouring seeds apart; xorshift needs a state that is not zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len()))
        }
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// A JSON input: the bytes before the document (the `admin` selector) and the document, an object or an array.
#[derive(Debug, Clone, PartialEq)]
pub struct Framed {
    /// The bytes before the JSON, kept as they are.
    pub prefix: Vec<u8>,
    /// The document.
    pub value: Value,
}

/// Reads an input as JSON behind at most [`MAX_PREFIX`] bytes; `None` when it is not an object or an array
/// there (most of a queue is not valid JSON: those inputs are left to AFL's byte mutations).
pub fn parse(data: &[u8]) -> Option<Framed> {
    (0..=MAX_PREFIX.min(data.len())).find_map(|skip| {
        let rest = data.get(skip..)?;
        let first = rest.iter().find(|b| !b.is_ascii_whitespace())?;
        if !matches!(first, b'{' | b'[') {
            return None;
        }
        let value: Value = serde_json::from_slice(rest).ok()?;
        Some(Framed {
            prefix: data.get(..skip)?.to_vec(),
            value,
        })
    })
}

/// One step from a node to a child.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

type Path = Vec<Step>;

/// The paths of the first [`MAX_NODES`] nodes of `value`, the root (the empty path) first.
fn paths(value: &Value) -> Vec<Path> {
    fn walk(value: &Value, here: &mut Path, out: &mut Vec<Path>) {
        if out.len() >= MAX_NODES {
            return;
        }
        out.push(here.clone());
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    here.push(Step::Key(key.clone()));
                    walk(child, here, out);
                    here.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    here.push(Step::Index(i));
                    walk(child, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

fn get<'a>(value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(value, |node, step| match step {
        Step::Key(k) => node.as_object()?.get(k),
        Step::Index(i) => node.as_array()?.get(*i),
    })
}

fn get_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |node, step| match step {
        Step::Key(k) => node.as_object_mut()?.get_mut(k),
        Step::Index(i) => node.as_array_mut()?.get_mut(*i),
    })
}

/// What the two inputs hold, for replacing values with ones the target already reads: borrowed, so gathering
/// them copies nothing (copying every member's subtree took most of a mutation's time).
#[derive(Debug, Default)]
struct Pools<'a> {
    keys: Vec<&'a str>,
    strings: Vec<&'a str>,
    numbers: Vec<&'a Number>,
    /// `(key, value)` of every object member, for moving a member into another object.
    members: Vec<(&'a str, &'a Value)>,
}

impl<'a> Pools<'a> {
    fn gather(&mut self, value: &'a Value) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if self.keys.len() < MAX_POOL && !self.keys.contains(&key.as_str()) {
                        self.keys.push(key);
                    }
                    if self.members.len() < MAX_POOL {
                        self.members.push((key, child));
                    }
                    self.gather(child);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.gather(v)),
            Value::String(s)
                if self.strings.len() < MAX_POOL && !self.strings.contains(&s.as_str()) =>
            {
                self.strings.push(s);
            }
            Value::Number(n) if self.numbers.len() < MAX_POOL => self.numbers.push(n),
            _ => {}
        }
    }
}

/// The mutations, in the order [`Op::ALL`] lists them; [`Op::name`] is what AFL++ records in a queue entry's
/// name (`op:json-graft`), so a run shows which of them found what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A subtree of the other input replaces a node (the root too, with a container).
    Graft,
    /// A member of an object of either input is added to an object (replacing a member of that name).
    AddMember,
    /// A member or an array element is removed.
    Remove,
    /// An array element is copied to a random place in its array.
    Duplicate,
    /// A value becomes an edge value of some kind or a value from the pools.
    Replace,
    /// A string is cut, doubled, emptied, changed in case or given an odd character.
    EditString,
    /// A number moves to its neighbours, its negation, a power of two or a float.
    EditNumber,
    /// A member's name becomes another name the inputs use, or a near miss of its own.
    RenameKey,
    /// A value is wrapped in an array or an object, or a container is emptied or replaced by its first child.
    Reshape,
    /// Two children of a container trade places (array elements, or member values).
    Swap,
}

impl Op {
    /// Every mutation.
    pub const ALL: [Op; 10] = [
        Op::Graft,
        Op::AddMember,
        Op::Remove,
        Op::Duplicate,
        Op::Replace,
        Op::EditString,
        Op::EditNumber,
        Op::RenameKey,
        Op::Reshape,
        Op::Swap,
    ];

    /// The mutation's name in AFL++'s queue file names.
    pub fn name(self) -> &'static str {
        match self {
            Op::Graft => "json-graft",
            Op::AddMember => "json-add-member",
            Op::Remove => "json-remove",
            Op::Duplicate => "json-duplicate",
            Op::Replace => "json-replace",
            Op::EditString => "json-edit-string",
            Op::EditNumber => "json-edit-number",
            Op::RenameKey => "json-rename-key",
            Op::Reshape => "json-reshape",
            Op::Swap => "json-swap",
        }
    }
}

/// Edge values of every kind: what validation code branches on.
fn edge_value(rng: &mut Rng) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => Value::Bool(true),
        2 => Value::Bool(false),
        3 => Value::from(0),
        4 => Value::from(-1),
        5 => Value::from(1),
        6 => Value::from(i64::MAX),
        7 => Value::from(u64::MAX),
        8 => Value::from(i64::MIN),
        9 => Value::from(0.5),
        10 => Value::from(1e300),
        11 => Value::String(String::new()),
        12 => Value::String("x".repeat(1 << rng.below(13))),
        13 => Value::Array(Vec::new()),
        14 => Value::Object(Map::new()),
        _ => Value::String("\u{0}\u{7f}\u{e9}\u{202e}\u{1f600}".to_string()),
    }
}

fn edit_string(s: &str, rng: &mut Rng, pools: &Pools) -> String {
    let chars: Vec<char> = s.chars().collect();
    match rng.below(10) {
        0 => String::new(),
        1 => chars[..rng.below(chars.len() + 1)].iter().collect(),
        2 => chars[rng.below(chars.len() + 1)..].iter().collect(),
        3 => s.repeat(2 + rng.below(3)),
        4 => s.to_uppercase(),
        5 => s.to_lowercase(),
        6 => {
            let mut out = chars.clone();
            // Bytes that split or end a value, and characters URL hosts (IDNA: a full-width stop is a dot,
            // `ß` and `İ` change under case mapping, a zero-width joiner is refused) and case folding treat
            // apart: an admin run's largest late burst came from non-ASCII bytes in a webhook URL's host.
            let odd = [
                '\u{0}', ' ', '.', '/', '%', '"', '\\', '*', '@', ':', '\u{e9}', '\u{df}',
                '\u{130}', '\u{ff0e}', '\u{200d}', '\u{ffff}',
            ];
            let at = rng.below(out.len() + 1);
            out.insert(at, odd[rng.below(odd.len())]);
            out.into_iter().collect()
        }
        7 => match rng.pick(&pools.strings) {
            Some(other) => format!("{s}{other}"),
            None => format!("{s}{s}"),
        },
        8 => {
            let mut out = chars.clone();
            if !out.is_empty() {
                let at = rng.below(out.len());
                out.remove(at);
            }
            out.into_iter().collect()
        }
        _ => format!(" {s} "),
    }
}

fn edit_number(n: &Number, rng: &mut Rng) -> Value {
    if let Some(i) = n.as_i64() {
        return match rng.below(8) {
            0 => Value::from(i.wrapping_add(1)),
            1 => Value::from(i.wrapping_sub(1)),
            2 => Value::from(i.wrapping_neg()),
            3 => Value::from(i.wrapping_mul(2)),
            4 => Value::from(i / 2),
            5 => Value::from(1_i64 << rng.below(63)),
            6 => Value::from((1_i64 << rng.below(63)) - 1),
            _ => Value::from(i as f64 + 0.5),
        };
    }
    if let Some(u) = n.as_u64() {
        return match rng.below(3) {
            0 => Value::from(u.wrapping_add(1)),
            1 => Value::from(u.wrapping_sub(1)),
            _ => Value::from(u / 2),
        };
    }
    let f = n.as_f64().unwrap_or(0.0);
    match rng.below(4) {
        0 => Value::from(f.trunc() as i64),
        1 => Number::from_f64(-f).map_or(Value::Null, Value::Number),
        2 => Number::from_f64(f * 1e10).map_or(Value::from(0), Value::Number),
        _ => Value::from(f64::MIN_POSITIVE),
    }
}

/// A random node of `value` (among `nodes`, its paths) that `wanted` accepts.
fn pick_node(
    value: &Value,
    nodes: &[Path],
    rng: &mut Rng,
    wanted: impl Fn(&Value) -> bool,
) -> Option<Path> {
    let matching: Vec<&Path> = nodes
        .iter()
        .filter(|p| get(value, p).is_some_and(&wanted))
        .collect();
    rng.pick(&matching).map(|p| (*p).clone())
}

/// Applies `op` to `value` once; `false` when it does not apply (no array to duplicate in, ...).
fn apply(op: Op, value: &mut Value, donor: &Value, pools: &Pools, rng: &mut Rng) -> bool {
    let nodes = paths(value);
    match op {
        Op::Graft => {
            let donor_nodes = paths(donor);
            let (Some(from), Some(to)) = (rng.pick(&donor_nodes), rng.pick(&nodes)) else {
                return false;
            };
            let Some(graft) = get(donor, from).cloned() else {
                return false;
            };
            if to.is_empty() && !(graft.is_object() || graft.is_array()) {
                return false;
            }
            match get_mut(value, to) {
                Some(slot) => {
                    *slot = graft;
                    true
                }
                None => false,
            }
        }
        Op::AddMember => {
            let to = pick_node(value, &nodes, rng, Value::is_object);
            let (Some(to), Some((key, member))) = (to, rng.pick(&pools.members)) else {
                return false;
            };
            let (key, member) = (key.to_string(), (*member).clone());
            match get_mut(value, &to).and_then(Value::as_object_mut) {
                Some(map) => {
                    map.insert(key, member);
                    true
                }
                None => false,
            }
        }
        Op::Remove => {
            let Some(path) = rng.pick(&nodes[1.min(nodes.len())..]).cloned() else {
                return false;
            };
            let Some((last, parent)) = path.split_last() else {
                return false;
            };
            match (get_mut(value, parent), last) {
                (Some(Value::Object(map)), Step::Key(k)) => map.remove(k).is_some(),
                (Some(Value::Array(items)), Step::Index(i)) if *i < items.len() => {
                    items.remove(*i);
                    true
                }
                _ => false,
            }
        }
        Op::Duplicate => {
            let non_empty = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty());
            let Some(path) = pick_node(value, &nodes, rng, non_empty) else {
                return false;
            };
            let Some(items) = get_mut(value, &path).and_then(Value::as_array_mut) else {
                return false;
            };
            let copy = items[rng.below(items.len())].clone();
            let at = rng.below(items.len() + 1);
            items.insert(at, copy);
            true
        }
        Op::Replace => {
            let Some(path) = rng.pick(&nodes[1.min(nodes.len())..]).cloned() else {
                return false;
            };
            let new = match rng.below(3) {
                0 => rng
                    .pick(&pools.strings)
                    .map(|s| Value::String(s.to_string())),
                1 => rng
                    .pick(&pools.numbers)
                    .map(|n| Value::Number((*n).clone())),
                _ => None,
            }
            .unwrap_or_else(|| edge_value(rng));
            match get_mut(value, &path) {
                Some(slot) => {
                    *slot = new;
                    true
                }
                None => false,
            }
        }
        Op::EditString => {
            let Some(path) = pick_node(value, &nodes, rng, Value::is_string) else {
                return false;
            };
            let Some(slot) = get_mut(value, &path) else {
                return false;
            };
            let edited = edit_string(slot.as_str().unwrap_or_default(), rng, pools);
            *slot = Value::String(edited);
            true
        }
        Op::EditNumber => {
            let Some(path) = pick_node(value, &nodes, rng, Value::is_number) else {
                return false;
            };
            let Some(slot) = get_mut(value, &path) else {
                return false;
            };
            let edited = match slot {
                Value::Number(n) => edit_number(n, rng),
                _ => return false,
            };
            *slot = edited;
            true
        }
        Op::RenameKey => {
            let non_empty = |v: &Value| v.as_object().is_some_and(|m| !m.is_empty());
            let Some(path) = pick_node(value, &nodes, rng, non_empty) else {
                return false;
            };
            let new_key = rng.pick(&pools.keys).map(|k| k.to_string());
            let Some(map) = get_mut(value, &path).and_then(Value::as_object_mut) else {
                return false;
            };
            let keys: Vec<String> = map.keys().cloned().collect();
            let Some(old) = rng.pick(&keys).cloned() else {
                return false;
            };
            let new_key = match new_key {
                Some(k) if !rng.one_in(3) => k,
                _ => edit_string(&old, rng, pools),
            };
            let Some(member) = map.remove(&old) else {
                return false;
            };
            map.insert(new_key, member);
            true
        }
        Op::Reshape => {
            let Some(path) = rng.pick(&nodes).cloned() else {
                return false;
            };
            let key = rng
                .pick(&pools.keys)
                .map(|k| k.to_string())
                .unwrap_or_default();
            let choice = rng.below(4);
            let Some(slot) = get_mut(value, &path) else {
                return false;
            };
            let old = std::mem::take(slot);
            *slot = match (choice, old) {
                (0, old) => Value::Array(vec![old]),
                (1, old) => Value::Object(Map::from_iter([(key, old)])),
                (2, Value::Array(items)) => items.into_iter().next().unwrap_or(Value::Null),
                (2, Value::Object(map)) => map.into_iter().next().map_or(Value::Null, |(_, v)| v),
                (_, Value::Array(_)) => Value::Array(Vec::new()),
                (_, Value::Object(_)) => Value::Object(Map::new()),
                (_, old) => Value::Array(vec![old.clone(), old]),
            };
            if path.is_empty() && !(slot.is_object() || slot.is_array()) {
                *slot = Value::Array(vec![std::mem::take(slot)]);
            }
            true
        }
        Op::Swap => {
            let several = |v: &Value| match v {
                Value::Array(a) => a.len() > 1,
                Value::Object(m) => m.len() > 1,
                _ => false,
            };
            let Some(path) = pick_node(value, &nodes, rng, several) else {
                return false;
            };
            let (a, b) = (rng.next() as usize, rng.next() as usize);
            match get_mut(value, &path) {
                Some(Value::Array(items)) => {
                    let n = items.len();
                    items.swap(a % n, b % n);
                    true
                }
                Some(Value::Object(map)) => {
                    let keys: Vec<String> = map.keys().cloned().collect();
                    let (ka, kb) = (&keys[a % keys.len()], &keys[b % keys.len()]);
                    let (Some(va), Some(vb)) = (map.get(ka).cloned(), map.get(kb).cloned()) else {
                        return false;
                    };
                    map.insert(ka.clone(), vb);
                    map.insert(kb.clone(), va);
                    true
                }
                _ => false,
            }
        }
    }
}

/// One mutation of `input` (1 to 4 of [`Op::ALL`] stacked), with `other` (another queue entry, if it parses)
/// as the source of grafts and pooled values. Returns the new input (the prefix, then compact JSON) and the
/// first mutation applied; `None` when `input` is not JSON behind a prefix, no mutation applies, or the
/// result would be longer than `max_size`.
pub fn mutate(
    input: &[u8],
    other: Option<&[u8]>,
    max_size: usize,
    rng: &mut Rng,
) -> Option<(Vec<u8>, Op)> {
    let Framed { prefix, mut value } = parse(input)?;
    // The input as it came is the pools' source and, when the other entry is not JSON, the donor too.
    let original = value.clone();
    let other = other.and_then(parse).map(|f| f.value);
    let mut pools = Pools::default();
    pools.gather(&original);
    if let Some(other) = &other {
        pools.gather(other);
    }
    let donor = other.as_ref().unwrap_or(&original);
    let mut first = None;
    let stacked = 1 + rng.below(4);
    let mut applied = 0;
    for _ in 0..4 * stacked {
        if applied == stacked {
            break;
        }
        let op = Op::ALL[rng.below(Op::ALL.len())];
        if apply(op, &mut value, donor, &pools, rng) {
            first.get_or_insert(op);
            applied += 1;
        }
    }
    let op = first?;
    let mut out = prefix;
    serde_json::to_writer(&mut out, &value).ok()?;
    (out.len() <= max_size).then_some((out, op))
}

/// The C entry points afl-fuzz looks up in the library (`AFL_CUSTOM_MUTATOR_LIBRARY`); they hand raw
/// buffers to [`mutate`] and keep its output alive until the next call, as AFL++ requires.
///
/// There is no `afl_custom_fuzz_count`: AFL++ then gives the mutator as many attempts per queue entry as its
/// energy for that entry allows and doubles them while they find paths. An entry that is not JSON costs a
/// failed parse per attempt and no execution (a mutation of 0 bytes is skipped).
#[allow(unsafe_code)]
pub mod ffi {
    use super::{mutate, Rng};
    use std::ffi::{c_char, c_uint, c_void, CString};
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// The mutator's state between calls.
    pub struct State {
        rng: Rng,
        out: Vec<u8>,
        described: CString,
    }

    /// Reads AFL's buffer as a slice (empty for a null pointer).
    ///
    /// # Safety
    /// `buf` is null or points to `len` readable bytes that stay valid for the call.
    unsafe fn slice<'a>(buf: *const u8, len: usize) -> &'a [u8] {
        if buf.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: the caller (afl-fuzz) passes a buffer of `len` bytes.
            unsafe { std::slice::from_raw_parts(buf, len) }
        }
    }

    /// `afl_custom_init`: a new state seeded from AFL's seed.
    #[no_mangle]
    pub extern "C" fn afl_custom_init(_afl: *mut c_void, seed: c_uint) -> *mut c_void {
        let state = State {
            rng: Rng::new(u64::from(seed)),
            out: Vec::new(),
            described: CString::default(),
        };
        Box::into_raw(Box::new(state)).cast()
    }

    /// `afl_custom_fuzz`: one mutation of `buf` into the state's buffer, `*out_buf` pointing at it; 0 (AFL
    /// skips the attempt) when there is none, as for an input that is not JSON.
    ///
    /// # Safety
    /// `data` is what [`afl_custom_init`] returned; `buf` and `add_buf` (which may be null) point to
    /// `buf_size` and `add_buf_size` readable bytes; `out_buf` is writable.
    #[no_mangle]
    pub unsafe extern "C" fn afl_custom_fuzz(
        data: *mut c_void,
        buf: *mut u8,
        buf_size: usize,
        out_buf: *mut *mut u8,
        add_buf: *mut u8,
        add_buf_size: usize,
        max_size: usize,
    ) -> usize {
        if data.is_null() || out_buf.is_null() {
            return 0;
        }
        // SAFETY: `data` is the `State` afl_custom_init boxed, used by one thread at a time.
        let state = unsafe { &mut *data.cast::<State>() };
        // SAFETY: afl-fuzz passes the entry's buffer and another entry's (or null) with their lengths.
        let (input, other) = unsafe { (slice(buf, buf_size), slice(add_buf, add_buf_size)) };
        let other = (!other.is_empty()).then_some(other);
        let mutated = catch_unwind(AssertUnwindSafe(|| {
            mutate(input, other, max_size, &mut state.rng)
        }));
        let Ok(Some((bytes, op))) = mutated else {
            return 0;
        };
        // The buffer stays at least as long as AFL's largest input: after this call afl-fuzz may write into
        // it at offsets of the input it gave (AFL++ 4.40c's frameshift stage patches length fields it
        // tracked; `cargo xtask fuzz` turns that stage off beside this mutator, and this keeps a write that
        // slips through inside the allocation). Reserved once, reused after.
        state.out.clear();
        state.out.reserve(max_size.max(buf_size).max(bytes.len()));
        state.out.extend_from_slice(&bytes);
        state.described = CString::new(op.name()).unwrap_or_default();
        // SAFETY: `out_buf` is writable; `state.out` lives until the next call.
        unsafe { *out_buf = state.out.as_mut_ptr() };
        state.out.len()
    }

    /// `afl_custom_describe`: the last mutation's name (AFL++ puts it in the queue entry's file name).
    ///
    /// # Safety
    /// `data` is what [`afl_custom_init`] returned.
    #[no_mangle]
    pub unsafe extern "C" fn afl_custom_describe(
        data: *mut c_void,
        _max_description_len: usize,
    ) -> *const c_char {
        if data.is_null() {
            return std::ptr::null();
        }
        // SAFETY: `data` is the boxed `State`.
        let state = unsafe { &*data.cast::<State>() };
        state.described.as_ptr()
    }

    /// `afl_custom_deinit`: frees the state.
    ///
    /// # Safety
    /// `data` is what [`afl_custom_init`] returned, not used again.
    #[no_mangle]
    pub unsafe extern "C" fn afl_custom_deinit(data: *mut c_void) {
        if !data.is_null() {
            // SAFETY: `data` came from Box::into_raw in afl_custom_init.
            drop(unsafe { Box::from_raw(data.cast::<State>()) });
        }
    }
}

#[cfg(test)]
mod tests;
