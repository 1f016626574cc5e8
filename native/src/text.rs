/// A checked text of valid UTF-8 holds 1 to `max` characters, as Python counts them: the bytes that do not
/// continue a UTF-8 sequence.
pub fn length_fits(text: &[u8], max: usize) -> bool {
    !text.is_empty() && length_at_most(text, max)
}

/// A text of valid UTF-8 holds at most `max` characters (none is fine), as Python counts them.
pub fn length_at_most(text: &[u8], max: usize) -> bool {
    text.len() <= max || text.iter().filter(|&&b| b & 0xC0 != 0x80).count() <= max
}
