//! Avro binary primitives, written as Python's k2.core.avro_writer writes them.

/// A long: zig-zag, then base-128 varint.
pub fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag > 0x7F {
        out.push((zigzag as u8 & 0x7F) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

/// Bytes or a string: its size, then its bytes.
pub fn write_bytes(out: &mut Vec<u8>, value: &[u8]) {
    write_long(out, value.len() as i64);
    out.extend_from_slice(value);
}

/// A positive decimal's unscaled integer as decimal bytes: big-endian two's complement, as few bytes as keep the
/// sign bit clear.
pub fn write_positive_decimal(out: &mut Vec<u8>, unscaled: u128) {
    let bits = 128 - unscaled.leading_zeros() as usize;
    let size = (bits + 8) / 8;
    write_bytes(out, &unscaled.to_be_bytes()[16 - size..]);
}

/// The unscaled integer of a positive decimal string without sign or exponent, with 1 to `integer_digits`
/// integer digits and, after a dot, 1 to `scale` fractional digits (`powers[k]` = 10^k); None for any other
/// string and for zero, which the caller's plain path must read.
pub fn plain_decimal(
    text: &[u8],
    integer_digits: usize,
    scale: usize,
    powers: &[u128],
) -> Option<u128> {
    let (whole, fraction) = match text.iter().position(|&c| c == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &text[text.len()..]),
    };
    let has_dot = whole.len() < text.len();
    if whole.is_empty()
        || whole.len() > integer_digits
        || (has_dot && (fraction.is_empty() || fraction.len() > scale))
    {
        return None;
    }
    let mut unscaled: u128 = 0;
    for &c in whole.iter().chain(fraction) {
        if !c.is_ascii_digit() {
            return None;
        }
        unscaled = unscaled * 10 + u128::from(c - b'0');
    }
    let unscaled = unscaled * powers[scale - fraction.len()];
    (unscaled != 0).then_some(unscaled)
}
