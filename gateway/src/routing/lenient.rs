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
/// encoding (`%25252e` needs three).
const MAX_ROUNDS: usize = 4;

/// The lenient reading of a normalised path, or `None` when it cannot route differently
/// from the path itself (no `%`, no `;`, nothing beyond ASCII: the common case, one scan
/// and no allocation). Case is left to the router, which ignores it on both readings.
pub fn lenient_reading(path: &str) -> Option<String> {
    if !path.bytes().any(|b| b == b'%' || b == b';' || b >= 0x80) {
        return None;
    }
    let mut bytes = path.as_bytes().to_vec();
    for _ in 0..MAX_ROUNDS {
        let decoded = percent_decode(&bytes);
        let folded = fold_lookalikes(&decoded);
        if folded == bytes {
            break;
        }
        bytes = folded;
    }
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(nul);
    }
    for b in &mut bytes {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    Some(resolve_leniently(&String::from_utf8_lossy(&bytes)))
}

/// Decodes every `%XX`, whatever it encodes; malformed escapes stay as they are.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex))
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Folds byte sequences that lenient decoders read as ASCII: overlong UTF-8 encodings of
/// ASCII (2, 3 and 4 bytes), the full-width forms U+FF01..U+FF5E, and the slash and dot
/// look-alikes U+2215, U+2044, U+FE68 and U+2024.
fn fold_lookalikes(bytes: &[u8]) -> Vec<u8> {
    let continuation = |b: Option<&u8>| b.copied().filter(|b| b & 0xC0 == 0x80).map(|b| u32::from(b & 0x3F));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b0 = bytes[i];
        let (folded, len) = match b0 {
            0xC0 | 0xC1 => match continuation(bytes.get(i + 1)) {
                Some(c1) => (Some((u32::from(b0 & 0x1F) << 6) | c1), 2),
                None => (None, 1),
            },
            0xE0..=0xEF => match (continuation(bytes.get(i + 1)), continuation(bytes.get(i + 2))) {
                (Some(c1), Some(c2)) => (Some((u32::from(b0 & 0x0F) << 12) | (c1 << 6) | c2), 3),
                _ => (None, 1),
            },
            0xF0 => {
                match (continuation(bytes.get(i + 1)), continuation(bytes.get(i + 2)), continuation(bytes.get(i + 3))) {
                    (Some(c1), Some(c2), Some(c3)) => (Some((c1 << 12) | (c2 << 6) | c3), 4),
                    _ => (None, 1),
                }
            }
            _ => (None, 1),
        };
        let ascii = folded.and_then(|code| match code {
            0..=0x7F => u8::try_from(code).ok(),
            0xFF01..=0xFF5E => u8::try_from(code - 0xFF01 + 0x21).ok(),
            0x2215 | 0x2044 => Some(b'/'),
            0xFE68 => Some(b'\\'),
            0x2024 => Some(b'.'),
            _ => None,
        });
        match ascii {
            Some(ascii) => out.push(ascii),
            None => out.extend_from_slice(&bytes[i..i + len]),
        }
        i += len;
    }
    out
}

/// Resolves segments the way a permissive server does: `;params` dropped first, empty and
/// `.` segments skipped, `..` pops (never above the root).
fn resolve_leniently(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        let name = segment.split(';').next().unwrap_or("");
        match name {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            name => kept.push(name),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
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
