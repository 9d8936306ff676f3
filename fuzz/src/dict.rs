//! AFL++ dictionaries (`fuzz/dict/<target>.dict`, given to afl-fuzz with `-x`), made from the seed corpora.
//!
//! Byte mutations rarely spell a whole field name: to reach `"require_any_scopes":` AFL has to guess
//! twenty bytes in a row. A dictionary hands it the words of each format, so the parser paths behind a field
//! name are reached in minutes instead of hours. The words are taken from the seeds (`seeds::all`), which
//! come from the unit tests' tables, so a new field in a seed is in the next dictionary:
//! - in every target whose input is (or carries) JSON: each string literal of a seed, and a key followed by
//!   its colon (`"kid":`), plus JSON's own tokens and numbers at the edges of what parsers take;
//! - in the request targets (`token`, `token_generated`): the methods, paths and credential schemes, and the
//!   Base64url header segment of each seed token (a header starts its token, so the segment mutates as a
//!   unit; words inside Base64 would not line up).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// AFL++ takes dictionary words up to 128 bytes (`MAX_DICT_FILE`); longer ones are refused with the file.
const MAX_WORD: usize = 128;

/// The targets that get a dictionary: those whose input is text with named parts. The binary formats
/// (`feed_binary`, `snapshot`, `shared_state`, `headers`) have no words to give.
pub const TARGETS: [&str; 6] = [
    "token",
    "token_generated",
    "config",
    "jwks",
    "feed",
    "admin",
];

/// JSON's own tokens and numbers at the edges of what the parsers take (u64 and i64 limits, a double
/// that overflows, an integer a double cannot hold, escapes of a lone surrogate and a NUL).
const JSON_WORDS: [&str; 20] = [
    "{\"",
    "\":",
    "\":\"",
    "\":[",
    "\":{",
    "\",\"",
    "[]",
    "{}",
    "true",
    "false",
    "null",
    "-1",
    "0.5",
    "1e309",
    "-0",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "\\ud800",
    "\\u0000",
];

/// Every JSON string literal in `bytes` (quotes included, escapes kept as written), and each one followed
/// by a colon as a key.
fn json_strings(bytes: &[u8], words: &mut BTreeSet<Vec<u8>>) {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        if i >= bytes.len() {
            break;
        }
        let literal = &bytes[start..=i];
        i += 1;
        if literal.len() > 2
            && literal.len() <= MAX_WORD
            && literal.iter().all(u8::is_ascii_graphic)
        {
            words.insert(literal.to_vec());
            if bytes.get(i) == Some(&b':') && literal.len() < MAX_WORD {
                let mut key = literal.to_vec();
                key.push(b':');
                words.insert(key);
            }
        }
    }
}

/// The words of a `METHOD\nPATH\nCREDENTIAL` request: method, path, scheme and
/// the token's header segment.
fn request_words(bytes: &[u8], words: &mut BTreeSet<Vec<u8>>) {
    let (method, path, credential) = crate::request_parts(bytes);
    for part in [method, path] {
        if !part.is_empty() && part.len() <= MAX_WORD {
            words.insert(part.to_vec());
        }
    }
    let (scheme, token) = match credential.iter().position(|&b| b == b' ') {
        Some(space) => credential.split_at(space + 1),
        None => (&[][..], credential),
    };
    if !scheme.is_empty() && scheme.len() <= MAX_WORD {
        words.insert(scheme.to_vec());
    }
    if let Some(dot) = token.iter().position(|&b| b == b'.') {
        if dot > 0 && dot < MAX_WORD {
            words.insert(token[..=dot].to_vec());
        }
    }
}

/// The dictionary of each target in [`TARGETS`], from `seeds` (as `seeds::all` gives them).
pub fn dictionaries(
    seeds: &[(&'static str, String, Vec<u8>)],
) -> BTreeMap<&'static str, BTreeSet<Vec<u8>>> {
    let mut out: BTreeMap<&'static str, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (target, _, bytes) in seeds {
        if !TARGETS.contains(target) {
            continue;
        }
        let words = out.entry(target).or_default();
        match *target {
            "token" => request_words(bytes, words),
            // 8 option bytes choose the configuration; the request follows them.
            "token_generated" => request_words(bytes.get(8..).unwrap_or_default(), words),
            _ => {
                json_strings(bytes, words);
                words.extend(JSON_WORDS.iter().map(|w| w.as_bytes().to_vec()));
            }
        }
    }
    out
}

/// One word as a dictionary line: printable ASCII as it is, `"` and `\` escaped, other bytes as `\xNN`.
fn line(word: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in word {
        match b {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(char::from(b));
            }
            0x20..=0x7e => s.push(char::from(b)),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

/// Writes `<dir>/<target>.dict` for every target in [`TARGETS`]; returns how many words in all.
pub fn write_all(seeds: &[(&'static str, String, Vec<u8>)], dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut total = 0;
    for (target, words) in dictionaries(seeds) {
        let mut text = format!(
            "# AFL++ dictionary of the `{target}` target, written by `cargo xtask fuzz --seeds` from the seed corpus\n# (fuzz/src/dict.rs says which words); do not edit by hand.\n"
        );
        for word in &words {
            text.push_str(&line(word));
            text.push('\n');
        }
        total += words.len();
        std::fs::write(dir.join(format!("{target}.dict")), text)?;
    }
    Ok(total)
}
