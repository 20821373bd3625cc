//! Route confusion: the path read the way a lenient back-end would read it.
//!
//! The normaliser gives the one strict spelling the router, auth and the upstream see. A
//! permissive server behind the gateway may read more into it: decode `%25` and then the
//! escape it uncovers (`%252e` -> `%2e` -> `.`), treat `\` as `/`, drop `;params` before
//! resolving dot segments (Tomcat: `/public/..;/admin` is `/admin`), fold overlong UTF-8
//! (`%C0%AE` is `.`) and full-width forms (`%EF%BC%8F` is `/`), or cut at a NUL. If that
//! reading lands on another route than the strict one, the request could reach a
//! protected path through an unprotected route, so the data plane refuses it (400
//! `bad-path-ambiguous`); when both land on the same route (`/search/100%25`), it is
//! served untouched. The upstream always receives the strict spelling.

/// Most rounds of decoding and folding followed; each round undoes one layer of
/// encoding (`%25252e` needs three, `%25C0%25AE` three: two decodes and a fold).
const MAX_ROUNDS: usize = 6;

use super::normalize::hex_value;

/// The lenient reading of a normalised path, or `None` when it cannot route differently
/// from the path itself (no `%`, no `;`, nothing beyond ASCII: the common case, one scan
/// and no allocation). Case is left to the router, which ignores it on both readings.
pub fn lenient_reading(path: &str) -> Option<String> {
    with_lenient_reading(path, |reading, _| reading.to_owned())
}

/// Calls `use_reading` with the lenient reading of `path` (see [`lenient_reading`]) and
/// whether it has the same segments, only spelt differently (nothing decoding uncovered
/// could add, remove or move a segment).
///
/// Built for the common escaped path (`/search/100%25`, `/caf%C3%A9`): one buffer, one
/// round, and no segment resolution when decoding uncovered nothing that could change
/// the segments. (A `SmallVec<[u8; 256]>` on the stack instead measured slower.)
pub fn with_lenient_reading<R>(path: &str, use_reading: impl FnOnce(&str, bool) -> R) -> Option<R> {
    if !path.bytes().any(|b| b == b'%' || b == b';' || b >= 0x80) {
        return None;
    }
    let mut current = Vec::with_capacity(path.len());
    let mut round = decode_and_fold(path.as_bytes(), &mut current);
    let mut structural = round.structural || path.contains(';');
    let mut rounds = 1;
    if round.again && rounds < MAX_ROUNDS {
        let mut next = Vec::with_capacity(current.len());
        while round.again && rounds < MAX_ROUNDS {
            round = decode_and_fold(&current, &mut next);
            structural |= round.structural;
            rounds += 1;
            std::mem::swap(&mut current, &mut next);
        }
    }
    if structural {
        let mut resolved = Vec::with_capacity(current.len());
        resolve_leniently(&current, &mut resolved);
        current = resolved;
    }
    let same_segments = !structural;
    Some(match std::str::from_utf8(&current) {
        Ok(reading) => use_reading(reading, same_segments),
        Err(_) => use_reading(&String::from_utf8_lossy(&current), same_segments),
    })
}

/// What one round of [`decode_and_fold`] found.
struct Round {
    /// It changed something, and its output still holds an escape or a look-alike:
    /// another round would change more.
    again: bool,
    /// It made a byte that can change the segments: `/`, `\`, `.`, `;` or NUL.
    structural: bool,
}

/// One round into `out`: every `%XX` decoded, whatever it encodes (malformed escapes stay
/// as they are), and byte sequences lenient decoders read as ASCII folded: overlong UTF-8
/// encodings of ASCII (2, 3 and 4 bytes), the full-width forms U+FF01..U+FF5E, and the
/// slash and dot look-alikes U+2215, U+2044, U+FE68 and U+2024.
fn decode_and_fold(bytes: &[u8], out: &mut Vec<u8>) -> Round {
    out.clear();
    let mut round = Round { again: false, structural: false };
    let mut changed = false;
    let mut made = |byte: u8, round: &mut Round| {
        changed = true;
        round.structural |= matches!(byte, b'/' | b'\\' | b'.' | b';' | 0);
        byte
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).copied().and_then(hex_value), bytes.get(i + 2).copied().and_then(hex_value))
        {
            out.push(made(hi << 4 | lo, &mut round));
            i += 3;
        } else if b >= 0xC0
            && let Some((ascii, len)) = fold_at(&bytes[i..])
        {
            out.push(made(ascii, &mut round));
            i += len;
        } else {
            // Copy the run up to the next byte that may start an escape or a look-alike.
            let run = bytes[i + 1..].iter().position(|&c| c == b'%' || c >= 0xC0).map_or(bytes.len(), |n| i + 1 + n);
            out.extend_from_slice(&bytes[i..run]);
            i = run;
        }
    }
    round.again = changed && has_more_to_undo(out);
    round
}

/// True when `bytes` still holds a `%XX` escape or a look-alike sequence.
fn has_more_to_undo(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'%' => {
            bytes.get(i + 1).copied().and_then(hex_value).is_some()
                && bytes.get(i + 2).copied().and_then(hex_value).is_some()
        }
        0xC0.. => fold_at(&bytes[i..]).is_some(),
        _ => false,
    })
}

/// The ASCII byte a lenient decoder reads at the start of `bytes`, and how many bytes it
/// takes, when they are a look-alike (see [`decode_and_fold`]).
fn fold_at(bytes: &[u8]) -> Option<(u8, usize)> {
    let continuation = |i: usize| bytes.get(i).copied().filter(|b| b & 0xC0 == 0x80).map(|b| u32::from(b & 0x3F));
    let b0 = bytes[0];
    let (code, len) = match b0 {
        0xC0 | 0xC1 => ((u32::from(b0 & 0x1F) << 6) | continuation(1)?, 2),
        0xE0..=0xEF => ((u32::from(b0 & 0x0F) << 12) | (continuation(1)? << 6) | continuation(2)?, 3),
        0xF0 => ((continuation(1)? << 12) | (continuation(2)? << 6) | continuation(3)?, 4),
        _ => return None,
    };
    let ascii = match code {
        0..=0x7F => u8::try_from(code).ok()?,
        0xFF01..=0xFF5E => u8::try_from(code - 0xFF01 + 0x21).ok()?,
        0x2215 | 0x2044 => b'/',
        0xFE68 => b'\\',
        0x2024 => b'.',
        _ => return None,
    };
    Some((ascii, len))
}

/// Resolves `path` into `out` the way a permissive server does: cut at a NUL, `\` as
/// `/`, `;params` dropped from each segment first, empty and `.` segments skipped, `..`
/// pops (never above the root).
fn resolve_leniently(path: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let path = path.iter().position(|&b| b == 0).map_or(path, |nul| &path[..nul]);
    for segment in path.split(|&b| b == b'/' || b == b'\\') {
        let name = segment.split(|&b| b == b';').next().unwrap_or_default();
        match name {
            b"" | b"." => {}
            b".." => {
                let parent = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(parent);
            }
            name => {
                out.push(b'/');
                out.extend_from_slice(name);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_need_no_second_reading() {
        for path in ["/", "/api/users/42", "/API/Users", "/a-b_c.d~e/f"] {
            assert_eq!(lenient_reading(path), None, "{path}");
        }
    }

    #[test]
    fn each_trick_of_the_attack_kit_is_read_as_a_lenient_server_reads_it() {
        let cases = [
            ("/public/%252e%252e/admin", "/admin"),
            ("/public/..%252fadmin", "/admin"),
            ("/public/..;/admin", "/admin"),
            ("/public/..;jsessionid=1/admin", "/admin"),
            ("/public/%C0%AE%C0%AE/admin", "/admin"),
            ("/public/..%C0%AFadmin", "/admin"),
            ("/public/..%EF%BC%8Fadmin", "/admin"),
            ("/public/%25252e%25252e/admin", "/admin"),
            ("/public/%E0%80%AE%E0%80%AE/admin", "/admin"),
            ("/public/..%E2%88%95admin", "/admin"),
            ("/public/%EF%BC%8E%EF%BC%8E/admin", "/admin"),
            ("/public/..%255cadmin", "/admin"),
            ("/admin%2500/../public", "/admin"),
            ("/search/100%25", "/search/100%"),
            ("/%2e%2e/%2e%2e/x", "/x"),
            ("/public/%%32e%%32e/admin", "/admin"),
            ("/public/%25C0%25AE%25C0%25AE/admin", "/admin"),
            ("/public/%ef%bc%85%32%65%ef%bc%85%32%65/admin", "/admin"),
        ];
        for (path, lenient) in cases {
            assert_eq!(lenient_reading(path).as_deref(), Some(lenient), "{path}");
        }
    }

    #[test]
    fn invalid_and_unmapped_bytes_survive_as_themselves() {
        assert_eq!(lenient_reading("/a/%zz/b").as_deref(), Some("/a/%zz/b"));
        assert_eq!(lenient_reading("/caf%C3%A9").as_deref(), Some("/café"));
        assert_eq!(lenient_reading("/x/%FF").as_deref(), Some("/x/\u{FFFD}"));
    }
}
