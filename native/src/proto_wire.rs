//! Protobuf wire format reading: fields one after another, as (field number, value).

const VARINT: u8 = 0;
const LEN: u8 = 2;
const I64: u8 = 1;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const I32: u8 = 5;
const MAX_GROUP_DEPTH: usize = 100;

/// Why bytes are not a protobuf message.
pub type Malformed = &'static str;

/// One field's value: a varint, a length-delimited run of bytes, or another wire type (skipped).
pub enum Value<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Other,
}

pub struct Reader<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, position: 0 }
    }

    /// The next field as (field number, value), None at the end.
    #[inline]
    pub fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, Malformed> {
        if self.position == self.data.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let (number, wire_type) = (tag >> 3, (tag & 7) as u8);
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err("invalid field number");
        }
        let value = match wire_type {
            VARINT => Value::Varint(self.varint()?),
            LEN => Value::Len(self.len_delimited()?),
            _ => {
                self.skip(number, wire_type, 0)?;
                Value::Other
            }
        };
        Ok(Some((number, value)))
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, Malformed> {
        if let Some(&byte) = self.data.get(self.position).filter(|&&byte| byte < 0x80) {
            self.position += 1;
            return Ok(u64::from(byte));
        }
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.data.get(self.position) else {
                return Err("truncated varint");
            };
            self.position += 1;
            value |= u64::from(byte & 0x7F).checked_shl(shift).unwrap_or(0);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes")
    }

    #[inline]
    fn take(&mut self, size: usize) -> Result<&'a [u8], Malformed> {
        let end = self
            .position
            .checked_add(size)
            .filter(|&end| end <= self.data.len())
            .ok_or("truncated field")?;
        let taken = &self.data[self.position..end];
        self.position = end;
        Ok(taken)
    }

    #[inline]
    fn len_delimited(&mut self) -> Result<&'a [u8], Malformed> {
        let size = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
        self.take(size)
    }

    fn skip(&mut self, number: u64, wire_type: u8, depth: usize) -> Result<(), Malformed> {
        match wire_type {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.len_delimited().map(drop),
            I32 => self.take(4).map(drop),
            START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err("groups nested too deeply");
                }
                loop {
                    if self.position == self.data.len() {
                        return Err("unterminated group");
                    }
                    let tag = self.varint()?;
                    let (inner, inner_type) = (tag >> 3, (tag & 7) as u8);
                    if inner_type == END_GROUP {
                        return if inner == number {
                            Ok(())
                        } else {
                            Err("mismatched end of group")
                        };
                    }
                    self.skip(inner, inner_type, depth + 1)?;
                }
            }
            _ => Err("invalid wire type"),
        }
    }
}
