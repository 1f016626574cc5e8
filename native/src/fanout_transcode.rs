//! One Avro record of the current schema version → its framed k2.marketdata.v1 message: field 1 of a
//! Subscribe*Response (tag, length, the serialized Trade or Quote), byte for byte what protobuf's deterministic
//! serialization of trade_to_proto / quote_to_proto writes. `Program::read_valid`, the reading and checking half,
//! is also the writer's Avro → Arrow decoder's (crate::arrow_decode).
//!
//! The field program comes from Python (k2/services/query/convert.py builds it from the Avro schema and the message
//! descriptor; k2/core/arrow.py its reading half), so nothing here knows the schema's layout. A record that is not
//! plainly valid is not judged here: `transcode` returns None and the caller hands it to the Python plain path.

use crate::limits::RecordLimits;
use crate::text;

/// How one Avro field is read and written.
pub enum FieldType {
    /// string → string
    Text,
    /// enum → enum: the proto number of each Avro symbol (0: none, handed back)
    Enum(Vec<u64>),
    /// long (timestamp-micros) → google.protobuf.Timestamp
    TimestampMicros,
    /// bytes (decimal) → its canonical decimal text
    Decimal(DecimalType),
    /// ["null", decimal] → optional string
    OptionalDecimal(DecimalType),
    /// array of string → repeated string
    TextList,
    /// ["null", long] → optional int64
    OptionalLong,
    /// ["null", map of string] → map<string, string>
    OptionalTextMap,
}

#[derive(Clone, Copy)]
pub struct DecimalType {
    /// unscaled values are below this in magnitude (10^precision)
    pub limit: i128,
    pub scale: usize,
}

pub struct Field {
    pub kind: FieldType,
    /// the proto field's tag (number and wire type) as a varint
    pub tag: Vec<u8>,
    /// an empty string is written (a field with presence); else proto3 leaves it out
    pub keep_empty: bool,
    /// handed back unless 1 to `max_text` characters
    pub checked_text: bool,
    /// handed back unless above zero (when present)
    pub positive: bool,
}

pub struct Program {
    /// the headers of a message in the current schema version, one per Kafka framing (k2.core.framing)
    pub headers: Vec<Vec<u8>>,
    /// in Avro order
    pub fields: Vec<Field>,
    /// field indexes in proto field number order (the order protobuf writes them)
    pub emit_order: Vec<usize>,
    /// fields that are both null or both present
    pub pairs: Vec<(usize, usize)>,
    pub max_text: usize,
    /// names (the symbol and exchange fields) and repeated fields (every list and map) within these
    pub limits: RecordLimits,
    pub symbol: usize,
    pub exchange: usize,
    pub timestamp: usize,
}

/// Microseconds since 1970 that Python's datetime holds (years 1 to 9999): the plain path refuses others.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;
const FIELD_ONE: u8 = 0x0a;

#[derive(Clone, Copy)]
pub enum Value {
    Null,
    Text(usize, usize),
    Long(i64),
    Decimal(i128),
    /// a range of `Scratch::texts`
    List(usize, usize),
    /// a range of `Scratch::entries`
    Map(usize, usize),
}

/// Per-record working space, reused from record to record.
#[derive(Default)]
pub struct Scratch {
    /// the record's fields in Avro order, as `read_valid` read them
    pub values: Vec<Value>,
    pub texts: Vec<(usize, usize)>,
    /// a map's entries in the order they came
    pub entries: Vec<((usize, usize), (usize, usize))>,
    keys: Vec<(usize, usize)>,
    body: Vec<u8>,
}

/// What routing needs of a transcoded record: spans of the value for symbol and exchange, the timestamp.
pub struct Routed {
    pub symbol: (usize, usize),
    pub exchange: (usize, usize),
    pub timestamp: i64,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn long(&mut self) -> Option<i64> {
        let mut bits: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.data.get(self.pos)?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return None; // beyond 64 bits
            }
            bits |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((bits >> 1) as i64 ^ -((bits & 1) as i64));
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<(usize, usize)> {
        let length = usize::try_from(self.long()?).ok()?;
        let start = self.pos;
        let end = start.checked_add(length)?;
        if end > self.data.len() {
            return None;
        }
        self.pos = end;
        Some((start, end))
    }

    fn text(&mut self) -> Option<(usize, usize)> {
        let (start, end) = self.bytes()?;
        std::str::from_utf8(&self.data[start..end]).ok()?;
        Some((start, end))
    }

    /// A union index that must be 0 (null) or 1 (the value): true for the value.
    fn present(&mut self) -> Option<bool> {
        match self.long()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// The item count of the next block of an array or map (0 at its end).
    fn block(&mut self) -> Option<usize> {
        let count = self.long()?;
        if count < 0 {
            self.long()?; // the block's size in bytes
        }
        usize::try_from(count.checked_abs()?).ok()
    }

    fn decimal(&mut self, decimal: DecimalType) -> Option<i128> {
        let (start, end) = self.bytes()?;
        let raw = &self.data[start..end];
        if raw.len() > 16 {
            return None;
        }
        // big-endian two's complement, sign-extended
        let fill = if raw.first().is_some_and(|b| b & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut wide = [fill; 16];
        wide[16 - raw.len()..].copy_from_slice(raw);
        let units = i128::from_be_bytes(wide);
        (units.unsigned_abs() < decimal.limit.unsigned_abs()).then_some(units)
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value > 0x7f {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn delimited(out: &mut Vec<u8>, tag: &[u8], payload: &[u8]) {
    out.extend_from_slice(tag);
    varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// tag, length, payload for a payload `write` makes below 128 bytes (so its length is one byte).
fn short_delimited(out: &mut Vec<u8>, tag: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(tag);
    let length_at = out.len();
    out.push(0);
    write(out);
    let length = out.len() - length_at - 1;
    debug_assert!(length < 0x80);
    out[length_at] = length as u8;
}

/// The decimal digits of `value` into the end of `digits`; returns where they start.
fn u64_digits(mut value: u64, digits: &mut [u8]) -> usize {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return at;
        }
    }
}

/// The canonical text of units × 10^-scale: no exponent, no trailing fractional zeros ("97123.45", "100").
fn decimal_text(units: i128, scale: usize, out: &mut Vec<u8>) {
    const TEN_19: u128 = 10_000_000_000_000_000_000;
    let mut buffer = [0u8; 40];
    let magnitude = units.unsigned_abs();
    // 64-bit arithmetic: a u128 divided by 10 per digit costs several times more
    let first = match u64::try_from(magnitude) {
        Ok(small) => u64_digits(small, &mut buffer),
        Err(_) => {
            let low = u64_digits((magnitude % TEN_19) as u64, &mut buffer);
            buffer[40 - 19..low].fill(b'0');
            u64_digits((magnitude / TEN_19) as u64, &mut buffer[..40 - 19])
        }
    };
    let digits = &buffer[first..];
    let length = digits.len();
    if units < 0 {
        out.push(b'-');
    }
    let whole = length.saturating_sub(scale);
    if whole == 0 {
        out.push(b'0');
    } else {
        out.extend_from_slice(&digits[..whole]);
    }
    // fractional digits: `scale` of them, zero-padded on the left, trailing zeros dropped
    let padding = scale.saturating_sub(length);
    let fraction = &digits[whole..];
    let kept = fraction
        .iter()
        .rposition(|&d| d != b'0')
        .map_or(0, |last| last + 1);
    if kept > 0 {
        out.push(b'.');
        out.extend(std::iter::repeat_n(b'0', padding));
        out.extend_from_slice(&fraction[..kept]);
    }
}

/// Map keys in the order upb's deterministic serialization writes them: by their bytes, and of two keys one of
/// which begins the other, the longer first.
fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let common = a.len().min(b.len());
    a[..common]
        .cmp(&b[..common])
        .then_with(|| b.len().cmp(&a.len()))
}

impl Program {
    /// Appends the framed message of `value` to `out`; None (and `out` unchanged) when the record is not plainly
    /// valid, for the plain path to judge.
    pub fn transcode(
        &self,
        value: &[u8],
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Option<Routed> {
        if !self.read_valid(value, scratch) {
            return None;
        }
        self.write(value, scratch);
        out.push(FIELD_ONE);
        varint(out, scratch.body.len() as u64);
        out.extend_from_slice(&scratch.body);
        let span = |index: usize| match scratch.values[index] {
            Value::Text(start, end) => (start, end),
            _ => (0, 0),
        };
        let timestamp = match scratch.values[self.timestamp] {
            Value::Long(micros) => micros,
            _ => 0,
        };
        Some(Routed {
            symbol: span(self.symbol),
            exchange: span(self.exchange),
            timestamp,
        })
    }

    /// Reads a current-version message into `scratch.values`: true when it is one, with nothing after its record,
    /// and plainly valid (else the plain path judges it).
    pub fn read_valid(&self, value: &[u8], scratch: &mut Scratch) -> bool {
        let Some(header) = self.headers.iter().find(|header| value.starts_with(header)) else {
            return false;
        };
        let mut reader = Reader {
            data: value,
            pos: header.len(),
        };
        self.read(&mut reader, scratch).is_some()
            && reader.pos == value.len()
            && self.plainly_valid(value, scratch)
    }

    fn read(&self, reader: &mut Reader, scratch: &mut Scratch) -> Option<()> {
        scratch.values.clear();
        scratch.texts.clear();
        scratch.entries.clear();
        for field in &self.fields {
            let value = match &field.kind {
                FieldType::Text => {
                    let (start, end) = reader.text()?;
                    Value::Text(start, end)
                }
                FieldType::Enum(numbers) => {
                    let index = usize::try_from(reader.long()?).ok()?;
                    Value::Long(*numbers.get(index).filter(|&&n| n != 0)? as i64)
                }
                FieldType::TimestampMicros => {
                    let micros = reader.long()?;
                    if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
                        return None;
                    }
                    Value::Long(micros)
                }
                FieldType::Decimal(decimal) => Value::Decimal(reader.decimal(*decimal)?),
                FieldType::OptionalDecimal(decimal) => {
                    if reader.present()? {
                        Value::Decimal(reader.decimal(*decimal)?)
                    } else {
                        Value::Null
                    }
                }
                FieldType::OptionalLong => {
                    if reader.present()? {
                        Value::Long(reader.long()?)
                    } else {
                        Value::Null
                    }
                }
                FieldType::TextList => {
                    let first = scratch.texts.len();
                    loop {
                        let count = reader.block()?;
                        if count == 0 {
                            break;
                        }
                        for _ in 0..count {
                            let text = reader.text()?;
                            scratch.texts.push(text);
                        }
                    }
                    Value::List(first, scratch.texts.len())
                }
                FieldType::OptionalTextMap => {
                    if reader.present()? {
                        let first = scratch.entries.len();
                        loop {
                            let count = reader.block()?;
                            if count == 0 {
                                break;
                            }
                            for _ in 0..count {
                                let key = reader.text()?;
                                let value = reader.text()?;
                                scratch.entries.push((key, value));
                            }
                        }
                        // a repeated key: the plain path keeps the last value
                        let data = reader.data;
                        let keys = &mut scratch.keys;
                        keys.clear();
                        keys.extend(scratch.entries[first..].iter().map(|&(key, _)| key));
                        keys.sort_unstable_by(|a, b| data[a.0..a.1].cmp(&data[b.0..b.1]));
                        let repeated = keys
                            .windows(2)
                            .any(|pair| data[pair[0].0..pair[0].1] == data[pair[1].0..pair[1].1]);
                        if repeated {
                            return None;
                        }
                        Value::Map(first, scratch.entries.len())
                    } else {
                        Value::Null
                    }
                }
            };
            scratch.values.push(value);
        }
        Some(())
    }

    fn plainly_valid(&self, data: &[u8], scratch: &Scratch) -> bool {
        let values = &scratch.values;
        let bytes = |&(start, end): &(usize, usize)| &data[start..end];
        let limits = &self.limits;
        let fields_valid = self.fields.iter().zip(values).enumerate().all(
            |(index, (field, value))| match *value {
                Value::Text(start, end) if index == self.symbol || index == self.exchange => {
                    limits.is_name(&data[start..end])
                }
                Value::Text(start, end) => {
                    !field.checked_text || text::length_fits(&data[start..end], self.max_text)
                }
                Value::Decimal(units) => !field.positive || units > 0,
                Value::List(first, last) => limits
                    .conditions_fit(last - first, scratch.texts[first..last].iter().map(bytes)),
                Value::Map(first, last) => limits.vendor_data_fits(
                    last - first,
                    scratch.entries[first..last]
                        .iter()
                        .map(|(key, value)| (bytes(key), bytes(value))),
                ),
                _ => true,
            },
        );
        fields_valid
            && self
                .pairs
                .iter()
                .all(|&(a, b)| matches!(values[a], Value::Null) == matches!(values[b], Value::Null))
    }

    fn write(&self, data: &[u8], scratch: &mut Scratch) {
        let body = &mut scratch.body;
        body.clear();
        for &index in &self.emit_order {
            let field = &self.fields[index];
            let tag = field.tag.as_slice();
            match (&field.kind, scratch.values[index]) {
                (_, Value::Null) => {}
                (FieldType::Text, Value::Text(start, end)) => {
                    if end > start || field.keep_empty {
                        delimited(body, tag, &data[start..end]);
                    }
                }
                (FieldType::Enum(_), Value::Long(number)) => {
                    body.extend_from_slice(tag);
                    varint(body, number as u64);
                }
                (FieldType::TimestampMicros, Value::Long(micros)) => {
                    let seconds = micros.div_euclid(1_000_000);
                    let nanos = micros.rem_euclid(1_000_000) * 1000;
                    short_delimited(body, tag, |body| {
                        if seconds != 0 {
                            body.push(0x08);
                            varint(body, seconds as u64);
                        }
                        if nanos != 0 {
                            body.push(0x10);
                            varint(body, nanos as u64);
                        }
                    });
                }
                (
                    FieldType::Decimal(decimal) | FieldType::OptionalDecimal(decimal),
                    Value::Decimal(units),
                ) => {
                    short_delimited(body, tag, |body| decimal_text(units, decimal.scale, body));
                }
                (FieldType::OptionalLong, Value::Long(number)) => {
                    body.extend_from_slice(tag);
                    varint(body, number as u64);
                }
                (FieldType::TextList, Value::List(first, last)) => {
                    for &(start, end) in &scratch.texts[first..last] {
                        delimited(body, tag, &data[start..end]);
                    }
                }
                (FieldType::OptionalTextMap, Value::Map(first, last)) => {
                    let entries = &mut scratch.entries[first..last];
                    entries.sort_unstable_by(|a, b| {
                        key_order(&data[a.0 .0..a.0 .1], &data[b.0 .0..b.0 .1])
                    });
                    for &((key_start, key_end), (value_start, value_end)) in entries.iter() {
                        let (key, value) =
                            (&data[key_start..key_end], &data[value_start..value_end]);
                        body.extend_from_slice(tag);
                        varint(
                            body,
                            (key.len()
                                + value.len()
                                + 2
                                + varint_size(key.len())
                                + varint_size(value.len())) as u64,
                        );
                        delimited(body, &[0x0a], key);
                        delimited(body, &[0x12], value);
                    }
                }
                _ => unreachable!("values are read as their field type"),
            }
        }
    }
}

fn varint_size(value: usize) -> usize {
    let bits = usize::BITS - (value | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(units: i128, scale: usize) -> String {
        let mut out = Vec::new();
        decimal_text(units, scale, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimal_texts_are_canonical() {
        assert_eq!(text(0, 18), "0");
        assert_eq!(text(1, 18), "0.000000000000000001");
        assert_eq!(text(-5 * 10i128.pow(17), 18), "-0.5");
        assert_eq!(text(100 * 10i128.pow(18), 18), "100");
        assert_eq!(text(9712345 * 10i128.pow(16), 18), "97123.45");
        assert_eq!(
            text(10i128.pow(38) - 1, 18),
            "99999999999999999999.999999999999999999"
        );
        assert_eq!(text(120, 0), "120");
        assert_eq!(text(-(10i128.pow(19) + 7), 18), "-10.000000000000000007");
        assert_eq!(text(u64::MAX as i128 + 1, 0), "18446744073709551616");
    }

    #[test]
    fn varint_sizes() {
        for value in [0usize, 1, 127, 128, 16383, 16384, usize::MAX] {
            let mut out = Vec::new();
            varint(&mut out, value as u64);
            assert_eq!(out.len(), varint_size(value));
        }
    }
}
