//! The live fan-out's per-message work (k2/services/query/fanout.py), once per poll:
//! - `read_messages`: a poll's Kafka messages → one `LiveBatch` per topic (positions, values, tracing headers),
//!   the latest value per message key, the error messages;
//! - `LiveBatch.decode`: every value → its framed message (fanout_transcode, without holding the GIL); what it
//!   hands back goes through the Python plain path, whose results `accept` adds;
//! - `LiveBatch.split`: a batch whose records would make too large a response, in parts that do not;
//! - `LiveBatch.select`: a subscriber group's records, joined into one bytes object.
use std::collections::HashMap;

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::fanout_transcode::{DecimalType, Field, FieldType, Program, Scratch};
use crate::limits::RecordLimits;

/// The program that transcodes one record kind (see k2/services/query/convert.py, which builds it).
#[pyclass(frozen, module = "k2._native")]
pub struct LiveTranscoder {
    program: Program,
}

type FieldSpec<'py> = (String, u32, bool, bool, bool, Bound<'py, PyAny>);

pub(crate) fn field_type(name: &str, argument: &Bound<'_, PyAny>) -> PyResult<FieldType> {
    let decimal = || -> PyResult<DecimalType> {
        let (precision, scale): (u32, usize) = argument.extract()?;
        if precision > 38 || scale > precision as usize {
            return Err(PyValueError::new_err(format!(
                "decimal({precision},{scale}) is beyond decimal(38,_)"
            )));
        }
        Ok(DecimalType {
            limit: 10i128.pow(precision),
            scale,
        })
    };
    Ok(match name {
        "text" => FieldType::Text,
        "enum" => FieldType::Enum(argument.extract()?),
        "timestamp-micros" => FieldType::TimestampMicros,
        "decimal" => FieldType::Decimal(decimal()?),
        "optional-decimal" => FieldType::OptionalDecimal(decimal()?),
        "text-list" => FieldType::TextList,
        "optional-long" => FieldType::OptionalLong,
        "optional-text-map" => FieldType::OptionalTextMap,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown field type {other:?}"
            )))
        }
    })
}

fn tag(number: u32, kind: &FieldType) -> Vec<u8> {
    let wire_type = match kind {
        FieldType::Enum(_) | FieldType::OptionalLong => 0,
        _ => 2,
    };
    let mut value = u64::from(number) << 3 | wire_type;
    let mut tag = Vec::new();
    while value > 0x7f {
        tag.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    tag.push(value as u8);
    tag
}

#[pymethods]
impl LiveTranscoder {
    /// `headers`: what a current-version message starts with (k2.core.framing: single-object, and the schema
    /// registry's when there is one). `fields`, in Avro order: (type, proto field number, keep an empty string, check the text's length,
    /// must be positive, argument: the proto numbers of an enum's symbols, a decimal's (precision, scale)).
    /// `pairs`: fields that are both null or both set. `limits`: the record's other bounds (crate::limits), on
    /// the symbol and exchange fields and every list and map. `routing`: the symbol, exchange and timestamp fields.
    #[new]
    fn new(
        headers: Vec<Vec<u8>>,
        fields: Vec<FieldSpec<'_>>,
        pairs: Vec<(usize, usize)>,
        max_text: usize,
        limits: RecordLimits,
        routing: (usize, usize, usize),
    ) -> PyResult<Self> {
        let mut numbers = Vec::new();
        let mut program_fields = Vec::new();
        for (name, number, keep_empty, checked_text, positive, argument) in &fields {
            let kind = field_type(name, argument)?;
            numbers.push(*number);
            program_fields.push(Field {
                tag: tag(*number, &kind),
                kind,
                keep_empty: *keep_empty,
                checked_text: *checked_text,
                positive: *positive,
            });
        }
        let mut emit_order: Vec<usize> = (0..program_fields.len()).collect();
        emit_order.sort_by_key(|&index| numbers[index]);
        let (symbol, exchange, timestamp) = routing;
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
                "routing fields or pairs do not name fields of the right types",
            ));
        }
        Ok(Self {
            program: Program {
                headers,
                fields: program_fields,
                emit_order,
                pairs,
                max_text,
                limits,
                symbol,
                exchange,
                timestamp,
            },
        })
    }

    /// The serialized message of one value, or None where the plain path must judge it.
    fn message<'py>(&self, py: Python<'py>, value: &[u8]) -> Option<Bound<'py, PyBytes>> {
        let mut framed = Vec::with_capacity(value.len() * 2);
        self.program
            .transcode(value, &mut Scratch::default(), &mut framed)?;
        // after field 1's tag and the length varint
        let header = 1 + framed[1..].iter().position(|&b| b & 0x80 == 0)? + 1;
        Some(PyBytes::new(py, &framed[header..]))
    }
}

/// The messages of one topic from one poll, and once decoded their framed records.
#[pyclass(module = "k2._native")]
pub struct LiveBatch {
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    /// the values, one after the other (an absent value is empty)
    raw: Vec<u8>,
    raw_spans: Vec<(usize, usize)>,
    headers: Option<Py<PyList>>,
    /// per partition, the offset after its last message
    positions: Vec<(i32, i64)>,
    decoded: bool,
    /// per message: whether it is a valid record, its span of `framed`, exchange and timestamp
    valid: Vec<bool>,
    framed_spans: Vec<(usize, usize)>,
    exchange_ids: Vec<u32>,
    timestamps: Vec<i64>,
    framed: Vec<u8>,
    /// `framed` is the valid records' messages in message order
    in_order: bool,
    symbols: Vec<Py<PyString>>,
    exchanges: Vec<Py<PyString>>,
    /// per symbol, the valid records' indexes in order
    by_symbol: Vec<Vec<u32>>,
    valid_count: usize,
    newest: i64,
}

impl LiveBatch {
    fn new() -> Self {
        Self {
            partitions: Vec::new(),
            offsets: Vec::new(),
            raw: Vec::new(),
            raw_spans: Vec::new(),
            headers: None,
            positions: Vec::new(),
            decoded: false,
            valid: Vec::new(),
            framed_spans: Vec::new(),
            exchange_ids: Vec::new(),
            timestamps: Vec::new(),
            framed: Vec::new(),
            in_order: true,
            symbols: Vec::new(),
            exchanges: Vec::new(),
            by_symbol: Vec::new(),
            valid_count: 0,
            newest: 0,
        }
    }

    fn push(&mut self, partition: i32, offset: i64, value: Option<&[u8]>) {
        self.partitions.push(partition);
        self.offsets.push(offset);
        let start = self.raw.len();
        self.raw.extend_from_slice(value.unwrap_or_default());
        self.raw_spans.push((start, self.raw.len()));
        self.advance(partition, offset);
    }

    fn advance(&mut self, partition: i32, offset: i64) {
        match self.positions.iter_mut().find(|(p, _)| *p == partition) {
            Some(position) => position.1 = offset + 1,
            None => self.positions.push((partition, offset + 1)),
        }
    }

    /// Messages `first..last` of a decoded batch as a batch of their own: their positions, records and headers.
    fn part(&self, py: Python<'_>, first: usize, last: usize) -> Self {
        let mut part = LiveBatch::new();
        for index in first..last {
            part.partitions.push(self.partitions[index]);
            part.offsets.push(self.offsets[index]);
            part.raw_spans.push((0, 0)); // decoded: the values are no longer needed
            part.advance(self.partitions[index], self.offsets[index]);
            let (from, to) = self.framed_spans[index];
            let start = part.framed.len();
            part.framed.extend_from_slice(&self.framed[from..to]);
            part.framed_spans.push((start, part.framed.len()));
            if self.valid[index] {
                part.newest = if part.valid_count == 0 {
                    self.timestamps[index]
                } else {
                    part.newest.max(self.timestamps[index])
                };
                part.valid_count += 1;
            }
        }
        part.headers = self
            .headers
            .as_ref()
            .map(|headers| headers.bind(py).get_slice(first, last).unbind());
        part.decoded = true;
        part.valid = self.valid[first..last].to_vec();
        part.exchange_ids = self.exchange_ids[first..last].to_vec();
        part.timestamps = self.timestamps[first..last].to_vec();
        part.symbols = self.symbols.iter().map(|s| s.clone_ref(py)).collect();
        part.exchanges = self.exchanges.iter().map(|e| e.clone_ref(py)).collect();
        part.by_symbol = self
            .by_symbol
            .iter()
            .map(|records| {
                records
                    .iter()
                    .filter(|&&i| (first..last).contains(&(i as usize)))
                    .map(|&i| i - first as u32)
                    .collect()
            })
            .collect();
        part
    }

    fn check_index(&self, index: usize) -> PyResult<()> {
        if index < self.partitions.len() {
            Ok(())
        } else {
            Err(PyIndexError::new_err("no such message in the batch"))
        }
    }
}

/// The result of transcoding a batch, made without the GIL.
struct Transcoded {
    valid: Vec<bool>,
    framed_spans: Vec<(usize, usize)>,
    framed: Vec<u8>,
    exchange_ids: Vec<u32>,
    timestamps: Vec<i64>,
    /// spans of `raw` of each distinct symbol and exchange, by id
    symbols: Vec<(usize, usize)>,
    exchanges: Vec<(usize, usize)>,
    by_symbol: Vec<Vec<u32>>,
    handed_back: Vec<usize>,
}

fn transcode_all(program: &Program, raw: &[u8], raw_spans: &[(usize, usize)]) -> Transcoded {
    let count = raw_spans.len();
    let mut out = Transcoded {
        valid: vec![false; count],
        framed_spans: vec![(0, 0); count],
        framed: Vec::with_capacity(raw.len() + raw.len() / 4),
        exchange_ids: vec![0; count],
        timestamps: vec![0; count],
        symbols: Vec::new(),
        exchanges: Vec::new(),
        by_symbol: Vec::new(),
        handed_back: Vec::new(),
    };
    let mut scratch = Scratch::default();
    let mut symbol_ids: HashMap<&[u8], u32> = HashMap::new();
    let mut exchange_ids: HashMap<&[u8], u32> = HashMap::new();
    for (index, &(start, end)) in raw_spans.iter().enumerate() {
        let framed_start = out.framed.len();
        let Some(routed) = program.transcode(&raw[start..end], &mut scratch, &mut out.framed)
        else {
            out.handed_back.push(index);
            continue;
        };
        let in_raw = |(from, to): (usize, usize)| (start + from, start + to);
        let (symbol, exchange) = (in_raw(routed.symbol), in_raw(routed.exchange));
        let symbol_id = *symbol_ids
            .entry(&raw[symbol.0..symbol.1])
            .or_insert_with(|| {
                out.symbols.push(symbol);
                out.by_symbol.push(Vec::new());
                (out.symbols.len() - 1) as u32
            });
        let exchange_id = *exchange_ids
            .entry(&raw[exchange.0..exchange.1])
            .or_insert_with(|| {
                out.exchanges.push(exchange);
                (out.exchanges.len() - 1) as u32
            });
        out.by_symbol[symbol_id as usize].push(index as u32);
        out.valid[index] = true;
        out.framed_spans[index] = (framed_start, out.framed.len());
        out.exchange_ids[index] = exchange_id;
        out.timestamps[index] = routed.timestamp;
    }
    out
}

fn intern_text(texts: &mut Vec<Py<PyString>>, text: &Bound<'_, PyString>) -> PyResult<u32> {
    let wanted = text.to_str()?;
    for (id, known) in texts.iter().enumerate() {
        if known.bind(text.py()).to_str()? == wanted {
            return Ok(id as u32);
        }
    }
    texts.push(text.clone().unbind());
    Ok((texts.len() - 1) as u32)
}

/// Per distinct text, whether `wanted` (a set) holds it; None: every text.
fn members(
    py: Python<'_>,
    texts: &[Py<PyString>],
    wanted: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Vec<bool>>> {
    wanted
        .map(|set| {
            texts
                .iter()
                .map(|text| set.contains(text.bind(py)))
                .collect()
        })
        .transpose()
}

#[pymethods]
impl LiveBatch {
    fn __len__(&self) -> usize {
        self.partitions.len()
    }

    /// {partition: the offset after its last message in the batch}
    #[getter]
    fn positions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let positions = PyDict::new(py);
        for &(partition, offset) in &self.positions {
            positions.set_item(partition, offset)?;
        }
        Ok(positions)
    }

    /// Each message's Kafka headers (None where it has none), or None when no message has any.
    #[getter]
    fn headers(&self, py: Python<'_>) -> Option<Py<PyList>> {
        self.headers.as_ref().map(|headers| headers.clone_ref(py))
    }

    /// (partition, offset) of a message
    fn position(&self, index: usize) -> PyResult<(i32, i64)> {
        self.check_index(index)?;
        Ok((self.partitions[index], self.offsets[index]))
    }

    #[getter]
    fn decoded(&self) -> bool {
        self.decoded
    }

    /// How many valid records the batch holds.
    #[getter]
    fn records(&self) -> usize {
        self.valid_count
    }

    /// Transcodes every message; returns [(index, value)] of those handed back to the plain path.
    fn decode<'py>(
        &mut self,
        py: Python<'py>,
        transcoder: &Bound<'py, LiveTranscoder>,
    ) -> PyResult<Vec<(usize, Bound<'py, PyBytes>)>> {
        if self.decoded {
            return Err(PyValueError::new_err("the batch is decoded already"));
        }
        let program = &transcoder.get().program;
        let (raw, raw_spans) = (&self.raw, &self.raw_spans);
        let out = py.detach(|| transcode_all(program, raw, raw_spans));
        let text = |(start, end): (usize, usize)| {
            // transcode_all only takes valid UTF-8
            PyString::new(
                py,
                std::str::from_utf8(&raw[start..end]).unwrap_or_default(),
            )
            .unbind()
        };
        self.symbols = out.symbols.iter().map(|&span| text(span)).collect();
        self.exchanges = out.exchanges.iter().map(|&span| text(span)).collect();
        let handed_back = out
            .handed_back
            .iter()
            .map(|&index| {
                let (start, end) = raw_spans[index];
                (index, PyBytes::new(py, &raw[start..end]))
            })
            .collect();
        self.valid_count = out.valid.iter().filter(|&&v| v).count();
        self.newest = out
            .timestamps
            .iter()
            .zip(&out.valid)
            .filter(|(_, &v)| v)
            .map(|(&t, _)| t)
            .max()
            .unwrap_or(0);
        self.valid = out.valid;
        self.framed_spans = out.framed_spans;
        self.framed = out.framed;
        self.exchange_ids = out.exchange_ids;
        self.timestamps = out.timestamps;
        self.by_symbol = out.by_symbol;
        self.decoded = true;
        Ok(handed_back)
    }

    /// Adds a record the plain path made of a handed-back message.
    fn accept(
        &mut self,
        index: usize,
        framed: &[u8],
        symbol: &Bound<'_, PyString>,
        exchange: &Bound<'_, PyString>,
        timestamp: i64,
    ) -> PyResult<()> {
        self.check_index(index)?;
        if !self.decoded || self.valid[index] {
            return Err(PyValueError::new_err("not a message handed back by decode"));
        }
        if self.valid[index + 1..].iter().any(|&v| v) {
            self.in_order = false;
        }
        let start = self.framed.len();
        self.framed.extend_from_slice(framed);
        self.framed_spans[index] = (start, self.framed.len());
        let symbol_id = intern_text(&mut self.symbols, symbol)?;
        if symbol_id as usize == self.by_symbol.len() {
            self.by_symbol.push(Vec::new());
        }
        let records = &mut self.by_symbol[symbol_id as usize];
        let at = records.partition_point(|&i| (i as usize) < index);
        records.insert(at, index as u32);
        self.exchange_ids[index] = intern_text(&mut self.exchanges, exchange)?;
        self.timestamps[index] = timestamp;
        self.newest = if self.valid_count == 0 {
            timestamp
        } else {
            self.newest.max(timestamp)
        };
        self.valid[index] = true;
        self.valid_count += 1;
        Ok(())
    }

    /// The batch as consecutive parts whose records take at most `max_bytes` each (a record larger than that is a
    /// part of its own), each with its own positions: so that no response made of a part is larger. The batch
    /// itself when it is that small (or not decoded).
    fn split(slf: &Bound<'_, Self>, max_bytes: usize) -> PyResult<Vec<Py<LiveBatch>>> {
        let py = slf.py();
        let batch = slf.borrow();
        if !batch.decoded || batch.framed.len() <= max_bytes {
            return Ok(vec![slf.clone().unbind()]);
        }
        let mut parts = Vec::new();
        let (mut first, mut size) = (0, 0);
        for index in 0..batch.partitions.len() {
            let (from, to) = batch.framed_spans[index];
            let record = if batch.valid[index] { to - from } else { 0 };
            if size + record > max_bytes && size > 0 {
                parts.push(Py::new(py, batch.part(py, first, index))?);
                (first, size) = (index, 0);
            }
            size += record;
        }
        parts.push(Py::new(py, batch.part(py, first, batch.partitions.len()))?);
        Ok(parts)
    }

    /// The distinct symbols of the valid records.
    fn symbols(&self, py: Python<'_>) -> Vec<Py<PyString>> {
        self.symbols
            .iter()
            .map(|symbol| symbol.clone_ref(py))
            .collect()
    }

    /// (the framed records that match, joined; how many; their newest timestamp) in message order. A record
    /// matches when its symbol is in `symbols` and its exchange in `exchanges` (None: any), start <= its timestamp
    /// < end, and its offset is at least `skip_below` of its partition.
    #[pyo3(signature = (symbols=None, exchanges=None, start=None, end=None, skip_below=None))]
    fn select<'py>(
        &self,
        py: Python<'py>,
        symbols: Option<&Bound<'py, PyAny>>,
        exchanges: Option<&Bound<'py, PyAny>>,
        start: Option<i64>,
        end: Option<i64>,
        skip_below: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, i64)> {
        let skip_below: Vec<(i32, i64)> = match skip_below {
            Some(offsets) => offsets
                .iter()
                .map(|(p, o)| Ok((p.extract()?, o.extract()?)))
                .collect::<PyResult<_>>()?,
            None => Vec::new(),
        };
        let unfiltered = symbols.is_none()
            && exchanges.is_none()
            && start.is_none()
            && end.is_none()
            && skip_below.is_empty();
        if unfiltered && self.in_order {
            return Ok((
                PyBytes::new(py, &self.framed),
                self.valid_count,
                self.newest,
            ));
        }
        let symbol_ok = members(py, &self.symbols, symbols)?;
        let exchange_ok = members(py, &self.exchanges, exchanges)?;
        let chosen: Vec<u32> = match &symbol_ok {
            Some(ok) => {
                let mut chosen: Vec<u32> = Vec::new();
                let mut lists = 0;
                for (records, _) in self.by_symbol.iter().zip(ok).filter(|(_, &ok)| ok) {
                    chosen.extend_from_slice(records);
                    lists += 1;
                }
                if lists > 1 {
                    chosen.sort_unstable();
                }
                chosen
            }
            None => (0..self.valid.len() as u32)
                .filter(|&i| self.valid[i as usize])
                .collect(),
        };
        let matches = |index: usize| {
            let timestamp = self.timestamps[index];
            exchange_ok
                .as_ref()
                .is_none_or(|ok| ok[self.exchange_ids[index] as usize])
                && start.is_none_or(|start| timestamp >= start)
                && end.is_none_or(|end| timestamp < end)
                && skip_below
                    .iter()
                    .find(|(p, _)| *p == self.partitions[index])
                    .is_none_or(|&(_, below)| self.offsets[index] >= below)
        };
        let chosen: Vec<usize> = chosen
            .into_iter()
            .map(|i| i as usize)
            .filter(|&i| matches(i))
            .collect();
        if chosen.is_empty() {
            return Ok((PyBytes::new(py, b""), 0, 0));
        }
        let length = chosen
            .iter()
            .map(|&i| self.framed_spans[i].1 - self.framed_spans[i].0)
            .sum();
        let newest = chosen
            .iter()
            .map(|&i| self.timestamps[i])
            .max()
            .unwrap_or(0);
        let joined = PyBytes::new_with(py, length, |buffer| {
            let mut at = 0;
            for &index in &chosen {
                let (from, to) = self.framed_spans[index];
                buffer[at..at + to - from].copy_from_slice(&self.framed[from..to]);
                at += to - from;
            }
            Ok(())
        })?;
        Ok((joined, chosen.len(), newest))
    }
}

/// Splits a poll's messages by topic (`topics`) into batches, in their order. Messages with an error are
/// returned apart, as they are; where `latest` is given (a dict per topic), each message's value is stored
/// under its key (the last one read for a key stays). Where `keys` is given (a set), a message with another key
/// only advances its batch's position.
#[pyfunction]
#[pyo3(signature = (messages, topics, latest=None, keys=None))]
fn read_messages<'py>(
    py: Python<'py>,
    messages: &Bound<'py, PyList>,
    topics: Vec<String>,
    latest: Option<Vec<Bound<'py, PyDict>>>,
    keys: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Vec<Py<LiveBatch>>, Bound<'py, PyList>)> {
    if latest
        .as_ref()
        .is_some_and(|latest| latest.len() != topics.len())
    {
        return Err(PyValueError::new_err("one latest dict per topic"));
    }
    let mut batches: Vec<LiveBatch> = topics.iter().map(|_| LiveBatch::new()).collect();
    let mut headers: Vec<Vec<Option<Bound<'py, PyAny>>>> =
        topics.iter().map(|_| Vec::new()).collect();
    let errors = PyList::empty(py);
    for message in messages.iter() {
        if !message.call_method0(intern!(py, "error"))?.is_none() {
            errors.append(&message)?;
            continue;
        }
        let topic = message.call_method0(intern!(py, "topic"))?;
        let topic = topic.cast::<PyString>()?.to_str()?;
        let Some(which) = topics.iter().position(|t| t == topic) else {
            return Err(PyValueError::new_err(format!(
                "a message of topic {topic:?}, not one of {topics:?}"
            )));
        };
        let partition: i32 = message.call_method0(intern!(py, "partition"))?.extract()?;
        let offset: i64 = message.call_method0(intern!(py, "offset"))?.extract()?;
        let value = message.call_method0(intern!(py, "value"))?;
        if latest.is_some() || keys.is_some() {
            let key = message.call_method0(intern!(py, "key"))?;
            if !key.is_none() {
                if let Some(latest) = &latest {
                    latest[which].set_item(&key, &value)?;
                }
                if let Some(keys) = keys {
                    if !keys.contains(&key)? {
                        batches[which].advance(partition, offset);
                        continue;
                    }
                }
            }
        }
        let message_headers = message.call_method0(intern!(py, "headers"))?;
        headers[which].push((!message_headers.is_none()).then_some(message_headers));
        let value = value.cast::<PyBytes>().ok().map(|bytes| bytes.as_bytes());
        batches[which].push(partition, offset, value);
    }
    batches
        .into_iter()
        .zip(headers)
        .map(|(mut batch, headers)| {
            if headers.iter().any(Option::is_some) {
                let list = PyList::new(
                    py,
                    headers
                        .into_iter()
                        .map(|h| h.unwrap_or_else(|| py.None().into_bound(py))),
                )?;
                batch.headers = Some(list.unbind());
            }
            Py::new(py, batch)
        })
        .collect::<PyResult<_>>()
        .map(|batches| (batches, errors))
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<LiveTranscoder>()?;
    module.add_class::<LiveBatch>()?;
    module.add_function(wrap_pyfunction!(read_messages, module)?)?;
    Ok(())
}
