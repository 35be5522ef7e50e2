//! netascii encoding (RFC 1350 §1 and appendix, after RFC 764): a line end
//! (LF in a Unix file) goes on the wire as CR LF and a bare CR as CR NUL.
//! An expansion can straddle two blocks, so a block's encoding starts from a
//! [`Cursor`]: the raw offset and the byte carried over from the block before.

use std::io;

use super::source::Source;

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const NUL: u8 = 0;

/// Where the encoding of one block starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The next raw byte of the file to encode.
    pub offset: u64,
    /// The second byte of an expansion that did not fit the previous block.
    pub carry: Option<u8>,
}

/// The whole of `raw` encoded at once: the definition the block encoder
/// must agree with (tests compare against it).
pub fn encode(raw: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(raw.len() + raw.len() / 16);
    for &b in raw {
        match b {
            LF => v.extend_from_slice(&[CR, LF]),
            CR => v.extend_from_slice(&[CR, NUL]),
            b => v.push(b),
        }
    }
    v
}

/// Encodes from `at` until `out` is full or the file ends; returns the
/// length written and where the next block starts.
pub fn encode_block<S: Source + ?Sized>(src: &mut S, at: Cursor, out: &mut [u8]) -> io::Result<(usize, Cursor)> {
    let mut n = 0;
    let mut cur = at;
    if let Some(c) = cur.carry.take() {
        if out.is_empty() {
            return Ok((0, at));
        }
        out[0] = c;
        n = 1;
    }
    let mut raw = [0u8; 512];
    while n < out.len() {
        // Each raw byte yields at most two: never read more than half the room left, rounded up.
        let want = (out.len() - n).div_ceil(2).min(raw.len());
        let got = src.read_at(cur.offset, &mut raw[..want])?;
        if got == 0 {
            break;
        }
        for &b in &raw[..got] {
            let (first, second) = match b {
                LF => (CR, Some(LF)),
                CR => (CR, Some(NUL)),
                b => (b, None),
            };
            out[n] = first;
            n += 1;
            cur.offset += 1;
            if let Some(s) = second {
                if n < out.len() {
                    out[n] = s;
                    n += 1;
                } else {
                    cur.carry = Some(s);
                }
            }
            if n == out.len() {
                break;
            }
        }
    }
    Ok((n, cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole file in blocks of `blksize`, as the transfer sends it.
    fn encode_all(file: &[u8], blksize: usize) -> Vec<Vec<u8>> {
        let mut src = file;
        let mut at = Cursor::default();
        let mut blocks = Vec::new();
        loop {
            let mut out = vec![0u8; blksize];
            let (n, next) = encode_block(&mut src, at, &mut out).unwrap();
            out.truncate(n);
            blocks.push(out);
            at = next;
            if n < blksize {
                return blocks;
            }
        }
    }

    #[test]
    fn line_ends_and_bare_carriage_returns() {
        let b = encode_all(b"a\nb\rc", 512);
        assert_eq!(b, vec![b"a\r\nb\r\0c".to_vec()]);
    }

    #[test]
    fn an_expansion_straddling_blocks_carries_over() {
        // 8-byte blocks: "abcdefg\n" becomes "abcdefg\r" | "\nxy".
        let b = encode_all(b"abcdefg\nxy", 8);
        assert_eq!(b, vec![b"abcdefg\r".to_vec(), b"\nxy".to_vec()]);
        let b = encode_all(b"abcdefg\r", 8);
        assert_eq!(b, vec![b"abcdefg\r".to_vec(), b"\0".to_vec()]);
    }

    #[test]
    fn a_full_last_block_is_followed_by_an_empty_one() {
        let b = encode_all(b"abc\n", 5);
        assert_eq!(b, vec![b"abc\r\n".to_vec(), vec![]]);
        assert_eq!(encode_all(b"", 8), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn re_encoding_from_a_cursor_gives_the_same_block() {
        let file: Vec<u8> = (0..5000u32).map(|i| [b'x', LF, CR, b'y'][(i * 7 % 4) as usize]).collect();
        let blocks = encode_all(&file, 100);
        let decoded: Vec<u8> = {
            let all: Vec<u8> = blocks.concat();
            let mut v = Vec::new();
            let mut i = 0;
            while i < all.len() {
                match (all[i], all.get(i + 1)) {
                    (CR, Some(&LF)) => (v.push(LF), i += 2),
                    (CR, Some(&NUL)) => (v.push(CR), i += 2),
                    (b, _) => (v.push(b), i += 1),
                };
            }
            v
        };
        assert_eq!(decoded, file, "decoding the wire bytes gives the file back");
        assert_eq!(blocks.concat(), encode(&file));
        // Block 7 again, from its cursor.
        let mut src = &file[..];
        let mut at = Cursor::default();
        for _ in 0..7 {
            let mut out = [0u8; 100];
            at = encode_block(&mut src, at, &mut out).unwrap().1;
        }
        let mut out = [0u8; 100];
        let (n, _) = encode_block(&mut src, at, &mut out).unwrap();
        assert_eq!(&out[..n], &blocks[7][..]);
    }
}
