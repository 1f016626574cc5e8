//! The writer's decode path (k2/core/arrow.py): a batch of Kafka values of one record kind → Arrow columns, in
//! one call and without holding the GIL. Each message is read and checked by the live fan-out's reader
//! (fanout_transcode::Program::read_valid); each column comes back as the buffers pyarrow builds it from
//! (validity bitmap, values, offsets, data). A message that is not a plainly valid current-version record is
//! handed back by index to the plain path, which accepts or rejects it.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

use crate::fanout::field_type;
use crate::fanout_transcode::{Field, FieldType, Program, Scratch, Value};
use crate::limits::RecordLimits;

/// Decodes one record kind's current-version messages to Arrow buffers (built by k2.core.arrow).
#[pyclass(frozen, module = "k2._native")]
pub struct ArrowDecoder {
    /// the reading half only: no proto tags, no emit order
    program: Program,
}

/// Validity bits, least significant first (Arrow's layout).
#[derive(Default)]
struct Bitmap {
    bits: Vec<u8>,
    length: usize,
}

impl Bitmap {
    fn push(&mut self, valid: bool) {
        if self.length.is_multiple_of(8) {
            self.bits.push(0);
        }
        if valid {
            if let Some(last) = self.bits.last_mut() {
                *last |= 1 << (self.length % 8);
            }
        }
        self.length += 1;
    }
}

/// 32-bit offsets (Arrow's string and list layouts), starting at 0.
struct Offsets(Vec<u8>);

impl Offsets {
    fn new() -> Self {
        Offsets(0i32.to_le_bytes().to_vec())
    }

    /// Ends the current item at `end`; false beyond 32 bits.
    fn push(&mut self, end: usize) -> bool {
        let Ok(end) = i32::try_from(end) else {
            return false;
        };
        self.0.extend_from_slice(&end.to_le_bytes());
        true
    }

    fn count(&self) -> usize {
        self.0.len() / 4 - 1
    }
}

/// Strings: offsets into their UTF-8 data.
struct Texts {
    offsets: Offsets,
    data: Vec<u8>,
}

impl Texts {
    fn new() -> Self {
        Texts {
            offsets: Offsets::new(),
            data: Vec::new(),
        }
    }

    fn push(&mut self, text: &[u8]) -> bool {
        self.data.extend_from_slice(text);
        self.offsets.push(self.data.len())
    }
}

/// One column as it is built, by the field's Avro type.
enum Column {
    Text(Texts),
    /// an enum's symbol indexes, u32
    Codes(Vec<u8>),
    /// i64: a timestamp's microseconds, or an optional long with its validity
    Longs(Option<Bitmap>, Vec<u8>),
    /// decimal128: 16-byte little-endian two's complement of the unscaled value
    Decimals(Option<Bitmap>, Vec<u8>),
    TextList(Offsets, Texts),
    TextMap(Bitmap, Offsets, Texts, Texts),
}

impl Column {
    fn new(kind: &FieldType) -> Self {
        match kind {
            FieldType::Text => Column::Text(Texts::new()),
            FieldType::Enum(_) => Column::Codes(Vec::new()),
            FieldType::TimestampMicros => Column::Longs(None, Vec::new()),
            FieldType::OptionalLong => Column::Longs(Some(Bitmap::default()), Vec::new()),
            FieldType::Decimal(_) => Column::Decimals(None, Vec::new()),
            FieldType::OptionalDecimal(_) => Column::Decimals(Some(Bitmap::default()), Vec::new()),
            FieldType::TextList => Column::TextList(Offsets::new(), Texts::new()),
            FieldType::OptionalTextMap => Column::TextMap(
                Bitmap::default(),
                Offsets::new(),
                Texts::new(),
                Texts::new(),
            ),
        }
    }

    /// Appends a value read as this column's field type; false where an offset passes 32 bits.
    fn push(&mut self, data: &[u8], value: Value, scratch: &Scratch) -> bool {
        let text = |(start, end): (usize, usize)| &data[start..end];
        match (self, value) {
            (Column::Text(texts), Value::Text(start, end)) => texts.push(&data[start..end]),
            (Column::Codes(codes), Value::Long(number)) => {
                // the numbers are the symbols' positions from 1 (ArrowDecoder::new)
                codes.extend_from_slice(&(number as u32 - 1).to_le_bytes());
                true
            }
            (Column::Longs(validity, values), value) => {
                let number = match value {
                    Value::Long(number) => Some(number),
                    _ => None,
                };
                if let Some(validity) = validity {
                    validity.push(number.is_some());
                }
                values.extend_from_slice(&number.unwrap_or(0).to_le_bytes());
                true
            }
            (Column::Decimals(validity, values), value) => {
                let units = match value {
                    Value::Decimal(units) => Some(units),
                    _ => None,
                };
                if let Some(validity) = validity {
                    validity.push(units.is_some());
                }
                values.extend_from_slice(&units.unwrap_or(0).to_le_bytes());
                true
            }
            (Column::TextList(offsets, items), Value::List(first, last)) => {
                let fits = scratch.texts[first..last]
                    .iter()
                    .all(|&span| items.push(text(span)));
                fits && offsets.push(items.offsets.count())
            }
            (Column::TextMap(validity, offsets, keys, values), value) => {
                let mut fits = true;
                validity.push(matches!(value, Value::Map(..)));
                if let Value::Map(first, last) = value {
                    for &(key, item) in &scratch.entries[first..last] {
                        fits &= keys.push(text(key)) && values.push(text(item));
                    }
                }
                fits && offsets.push(keys.offsets.count())
            }
            _ => unreachable!("values are read as their field type"),
        }
    }

    /// The buffers pyarrow builds the column from (k2.core.arrow), None for a column without nulls' validity.
    fn buffers(self) -> Vec<Option<Vec<u8>>> {
        let bits = |validity: Option<Bitmap>| validity.map(|v| v.bits);
        match self {
            Column::Text(texts) => vec![Some(texts.offsets.0), Some(texts.data)],
            Column::Codes(codes) => vec![Some(codes)],
            Column::Longs(validity, values) | Column::Decimals(validity, values) => {
                vec![bits(validity), Some(values)]
            }
            Column::TextList(offsets, items) => {
                vec![Some(offsets.0), Some(items.offsets.0), Some(items.data)]
            }
            Column::TextMap(validity, offsets, keys, values) => vec![
                Some(validity.bits),
                Some(offsets.0),
                Some(keys.offsets.0),
                Some(keys.data),
                Some(values.offsets.0),
                Some(values.data),
            ],
        }
    }
}

struct Decoded {
    /// the accepted messages' indexes, i64
    rows: Vec<u8>,
    count: usize,
    columns: Vec<Column>,
    handed_back: Vec<usize>,
    fits: bool,
}

fn decode_all(program: &Program, values: &[Option<PyBackedBytes>]) -> Decoded {
    let mut decoded = Decoded {
        rows: Vec::with_capacity(values.len() * 8),
        count: 0,
        columns: program
            .fields
            .iter()
            .map(|field| Column::new(&field.kind))
            .collect(),
        handed_back: Vec::new(),
        fits: true,
    };
    let mut scratch = Scratch::default();
    for (index, value) in values.iter().enumerate() {
        let Some(value) = value.as_deref() else {
            decoded.handed_back.push(index); // a null value (a tombstone)
            continue;
        };
        if !program.read_valid(value, &mut scratch) {
            decoded.handed_back.push(index);
            continue;
        }
        for (column, &field_value) in decoded.columns.iter_mut().zip(&scratch.values) {
            decoded.fits &= column.push(value, field_value, &scratch);
        }
        decoded
            .rows
            .extend_from_slice(&(index as i64).to_le_bytes());
        decoded.count += 1;
    }
    decoded
}

type Buffers<'py> = Vec<Vec<Option<Bound<'py, PyBytes>>>>;

#[pymethods]
impl ArrowDecoder {
    /// `headers`: what a current-version message starts with (k2.core.framing). `fields`, in Avro order: (type
    /// as fanout's LiveTranscoder names it, check the text's length, must be positive, argument: an enum's
    /// [1..=symbols], a decimal's (precision, scale)). `pairs`: fields that are both null or both set.
    /// `limits`: the record's other bounds (crate::limits). `names`: the symbol, exchange and timestamp fields.
    #[new]
    fn new(
        headers: Vec<Vec<u8>>,
        fields: Vec<(String, bool, bool, Bound<'_, PyAny>)>,
        pairs: Vec<(usize, usize)>,
        max_text: usize,
        limits: RecordLimits,
        names: (usize, usize, usize),
    ) -> PyResult<Self> {
        let mut program_fields = Vec::new();
        for (name, checked_text, positive, argument) in &fields {
            let kind = field_type(name, argument)?;
            if let FieldType::Enum(numbers) = &kind {
                if !numbers.iter().enumerate().all(|(i, &n)| n == i as u64 + 1) {
                    return Err(PyValueError::new_err(
                        "an enum's numbers are 1 to its symbols",
                    ));
                }
            }
            program_fields.push(Field {
                kind,
                tag: Vec::new(),
                keep_empty: false,
                checked_text: *checked_text,
                positive: *positive,
            });
        }
        let (symbol, exchange, timestamp) = names;
        let is = |index: usize, wanted: fn(&FieldType) -> bool| {
            program_fields.get(index).is_some_and(|f| wanted(&f.kind))
        };
        if !is(symbol, |k| matches!(k, FieldType::Text))
            || !is(exchange, |k| matches!(k, FieldType::Text))
            || !is(timestamp, |k| matches!(k, FieldType::TimestampMicros))
            || pairs
                .iter()
                .any(|&(a, b)| a >= program_fields.len() || b >= program_fields.len())
        {
            return Err(PyValueError::new_err(
                "name fields or pairs do not name fields of the right types",
            ));
        }
        Ok(Self {
            program: Program {
                headers,
                fields: program_fields,
                emit_order: Vec::new(),
                pairs,
                max_text,
                limits,
                symbol,
                exchange,
                timestamp,
            },
        })
    }

    /// (the accepted messages' indexes as i64 buffer, how many, each column's buffers, the indexes of the
    /// messages handed back to the plain path).
    #[allow(clippy::type_complexity)]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        values: Vec<Option<PyBackedBytes>>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, Buffers<'py>, Vec<usize>)> {
        let decoded = py.detach(|| decode_all(&self.program, &values));
        if !decoded.fits {
            return Err(PyValueError::new_err(
                "a batch's texts pass Arrow's 32-bit offsets: decode it in smaller batches",
            ));
        }
        let columns = decoded
            .columns
            .into_iter()
            .map(|column| {
                column
                    .buffers()
                    .into_iter()
                    .map(|buffer| buffer.map(|bytes| PyBytes::new(py, &bytes)))
                    .collect()
            })
            .collect();
        Ok((
            PyBytes::new(py, &decoded.rows),
            decoded.count,
            columns,
            decoded.handed_back,
        ))
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<ArrowDecoder>()
}
