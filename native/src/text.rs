/// A checked text of valid UTF-8 holds 1 to `max` characters, as Python counts them: the bytes that do not
/// continue a UTF-8 sequence.
pub fn length_fits(text: &[u8], max: usize) -> bool {
    !text.is_empty()
        && (text.len() <= max || text.iter().filter(|&&b| b & 0xC0 != 0x80).count() <= max)
}
