//! Published trades (a serialized k2.ingest.v1.PublishTradesRequest) → their Avro v2 Kafka messages, in one
//! call per batch. A trade is written here only when it can be judged at a glance (texts within their limits,
//! known enum values, plain decimals that fit, a canonical lowercase message id or none, a timestamp that is
//! whole microseconds within years 1 to 9999, names and repeated fields within crate::limits); any other is
//! handed back by index to the Python plain path
//! (k2.core.proto_avro), which accepts or rejects it. What the schema defines (header, field order, enum
//! symbols, decimal precision) comes from Python.
use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::avro_write::{plain_decimal, write_bytes, write_long, write_positive_decimal};
use crate::limits::RecordLimits;
use crate::proto_wire::{Reader, Value};
use crate::text;

/// The Avro v2 trade fields in the order this module writes them.
const TRADE_FIELDS: [&str; 15] = [
    "message_id",
    "trade_id",
    "symbol",
    "exchange",
    "asset_class",
    "timestamp",
    "price",
    "quantity",
    "currency",
    "side",
    "trade_conditions",
    "source_sequence",
    "ingestion_timestamp",
    "platform_sequence",
    "vendor_data",
];
const MESSAGE_ID_SIZE: usize = 36;
const BATCH_ID_PREFIX_SIZE: usize = 24;
const NODE_MASK: u64 = (1 << 48) - 1;
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// One Trade message's fields as read from the wire (proto3 defaults where absent).
#[derive(Default)]
struct Trade<'a> {
    message_id: &'a [u8],
    trade_id: &'a [u8],
    symbol: &'a [u8],
    exchange: &'a [u8],
    asset_class: i32,
    timestamp: Option<(i64, i32)>,
    price: &'a [u8],
    quantity: &'a [u8],
    currency: &'a [u8],
    side: i32,
    trade_conditions: Vec<&'a [u8]>,
    source_sequence: Option<i64>,
    platform_sequence: Option<i64>,
    vendor_data: Vec<(&'a [u8], &'a [u8])>,
}

#[inline]
fn text(value: &[u8]) -> Result<&[u8], &'static str> {
    if value.is_ascii() || std::str::from_utf8(value).is_ok() {
        Ok(value)
    } else {
        Err("a string field is not valid UTF-8")
    }
}

impl<'a> Trade<'a> {
    /// Reads a Trade as upb does: the last of a repeated singular field wins, a repeated message is merged, a
    /// field of an unexpected wire type is an unknown field, and unknown fields are skipped.
    fn read(&mut self, data: &'a [u8]) -> Result<(), &'static str> {
        let (mut trade_conditions, mut vendor_data) = (
            std::mem::take(&mut self.trade_conditions),
            std::mem::take(&mut self.vendor_data),
        );
        trade_conditions.clear();
        vendor_data.clear();
        *self = Trade {
            trade_conditions,
            vendor_data,
            ..Trade::default()
        };
        let mut reader = Reader::new(data);
        while let Some((number, value)) = reader.field()? {
            match (number, value) {
                (1, Value::Len(value)) => self.message_id = text(value)?,
                (2, Value::Len(value)) => self.trade_id = text(value)?,
                (3, Value::Len(value)) => self.symbol = text(value)?,
                (4, Value::Len(value)) => self.exchange = text(value)?,
                (5, Value::Varint(value)) => self.asset_class = value as i32,
                (6, Value::Len(value)) => {
                    let (mut seconds, mut nanos) = self.timestamp.unwrap_or((0, 0));
                    let mut timestamp = Reader::new(value);
                    while let Some((number, value)) = timestamp.field()? {
                        match (number, value) {
                            (1, Value::Varint(value)) => seconds = value as i64,
                            (2, Value::Varint(value)) => nanos = value as i32,
                            _ => {}
                        }
                    }
                    self.timestamp = Some((seconds, nanos));
                }
                (7, Value::Len(value)) => self.price = text(value)?,
                (8, Value::Len(value)) => self.quantity = text(value)?,
                (9, Value::Len(value)) => self.currency = text(value)?,
                (10, Value::Varint(value)) => self.side = value as i32,
                (11, Value::Len(value)) => self.trade_conditions.push(text(value)?),
                (12, Value::Varint(value)) => self.source_sequence = Some(value as i64),
                (14, Value::Varint(value)) => self.platform_sequence = Some(value as i64),
                (15, Value::Len(value)) => {
                    let (mut key, mut item): (&[u8], &[u8]) = (b"", b"");
                    let mut entry = Reader::new(value);
                    while let Some((number, value)) = entry.field()? {
                        match (number, value) {
                            (1, Value::Len(value)) => key = text(value)?,
                            (2, Value::Len(value)) => item = text(value)?,
                            _ => {}
                        }
                    }
                    self.vendor_data.push((key, item));
                }
                _ => {} // ingestion_timestamp (set by ingest) and unknown fields
            }
        }
        Ok(())
    }
}

/// Writes published trades as Avro v2 Kafka messages. Built once (k2.core.proto_avro) from the current schema.
#[pyclass(frozen, module = "k2._native")]
struct TradeEncoder {
    header: Vec<u8>,
    asset_classes: Vec<Vec<u8>>, // by proto enum value: the Avro enum index as written, empty when unknown
    sides: Vec<Vec<u8>>,
    max_text_length: usize,
    limits: RecordLimits,
    integer_digits: usize,
    scale: usize,
    powers: Vec<u128>,
    seconds: (i64, i64), // timestamps from the first up to (excluding) the second, in seconds since 1970
}

fn enum_table(written: HashMap<u32, Vec<u8>>) -> Vec<Vec<u8>> {
    let size = written.keys().max().map_or(0, |&value| value as usize + 1);
    let mut table = vec![Vec::new(); size];
    for (value, tag) in written {
        table[value as usize] = tag;
    }
    table
}

fn tag(table: &[Vec<u8>], value: i32) -> &[u8] {
    usize::try_from(value)
        .ok()
        .and_then(|value| table.get(value))
        .map_or(b"", Vec::as_slice)
}

fn is_canonical_uuid(text: &[u8]) -> bool {
    text.len() == MESSAGE_ID_SIZE
        && text
            .iter()
            .enumerate()
            .all(|(position, &c)| match position {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            })
}

impl TradeEncoder {
    fn is_plain_text(&self, text: &[u8]) -> bool {
        text::length_fits(text, self.max_text_length)
    }

    /// The trade's Avro message (after the header and message id), or false when the plain path must judge it.
    fn write_body(&self, out: &mut Vec<u8>, trade: &mut Trade, ingestion_timestamp: i64) -> bool {
        let (asset_class, side) = (
            tag(&self.asset_classes, trade.asset_class),
            tag(&self.sides, trade.side),
        );
        let Some((seconds, nanos)) = trade.timestamp else {
            return false;
        };
        let decimal = |text| plain_decimal(text, self.integer_digits, self.scale, &self.powers);
        let (Some(price), Some(quantity)) = (decimal(trade.price), decimal(trade.quantity)) else {
            return false;
        };
        let limits = &self.limits;
        if asset_class.is_empty()
            || side.is_empty()
            || !(self.is_plain_text(trade.trade_id)
                && limits.is_name(trade.symbol)
                && limits.is_name(trade.exchange)
                && self.is_plain_text(trade.currency))
            || !limits.conditions_fit(
                trade.trade_conditions.len(),
                trade.trade_conditions.iter().copied(),
            )
            || !limits.vendor_data_fits(trade.vendor_data.len(), trade.vendor_data.iter().copied())
            || !(self.seconds.0..self.seconds.1).contains(&seconds)
            || !(0..1_000_000_000).contains(&nanos)
            || nanos % 1000 != 0
        {
            return false;
        }
        write_bytes(out, trade.trade_id);
        write_bytes(out, trade.symbol);
        write_bytes(out, trade.exchange);
        out.extend_from_slice(asset_class);
        write_long(out, seconds * 1_000_000 + i64::from(nanos / 1000));
        write_positive_decimal(out, price);
        write_positive_decimal(out, quantity);
        write_bytes(out, trade.currency);
        out.extend_from_slice(side);
        if !trade.trade_conditions.is_empty() {
            write_long(out, trade.trade_conditions.len() as i64);
            for condition in &trade.trade_conditions {
                write_bytes(out, condition);
            }
        }
        out.push(0);
        write_optional_long(out, trade.source_sequence);
        write_long(out, ingestion_timestamp);
        write_optional_long(out, trade.platform_sequence);
        // The map ordered by key (as the plain path orders it); of equal keys the last on the wire wins.
        let entries = &mut trade.vendor_data;
        if entries.is_empty() {
            out.push(0);
        } else {
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let kept = |position: usize| {
                position + 1 == entries.len() || entries[position].0 != entries[position + 1].0
            };
            out.push(2);
            write_long(
                out,
                (0..entries.len())
                    .filter(|&position| kept(position))
                    .count() as i64,
            );
            for (position, (key, value)) in entries.iter().enumerate() {
                if kept(position) {
                    write_bytes(out, key);
                    write_bytes(out, value);
                }
            }
            out.push(0);
        }
        true
    }
}

/// A nullable long, null first in the union.
fn write_optional_long(out: &mut Vec<u8>, value: Option<i64>) {
    match value {
        Some(value) => {
            out.push(2);
            write_long(out, value);
        }
        None => out.push(0),
    }
}

/// Per batch: the keys (symbol bytes) of its distinct symbols and how many trades each has.
struct Symbols<'a, 'py> {
    positions: HashMap<&'a [u8], usize>,
    seen: Vec<(&'a [u8], Bound<'py, PyBytes>, usize)>,
}

impl<'a, 'py> Symbols<'a, 'py> {
    fn count(&mut self, py: Python<'py>, symbol: &'a [u8]) -> &Bound<'py, PyBytes> {
        let position = *self.positions.entry(symbol).or_insert_with(|| {
            self.seen.push((symbol, PyBytes::new(py, symbol), 0));
            self.seen.len() - 1
        });
        let seen = &mut self.seen[position];
        seen.2 += 1;
        &seen.1
    }
}

/// (keys, values, unjudged, symbols) of one encoded batch.
type Encoded<'py> = (
    Vec<Option<Bound<'py, PyBytes>>>,
    Vec<Option<Bound<'py, PyBytes>>>,
    Vec<usize>,
    Bound<'py, PyDict>,
);

#[pymethods]
impl TradeEncoder {
    /// header: the schema's single-object header; fields: its field names in order (checked against the order
    /// written here); asset_classes, sides: proto enum value → the Avro enum index as written; limits: the
    /// record's other bounds (crate::limits); decimals: (precision, scale); seconds: the timestamps accepted
    /// here, [first, end) in seconds since 1970.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        header: Vec<u8>,
        fields: Vec<String>,
        asset_classes: HashMap<u32, Vec<u8>>,
        sides: HashMap<u32, Vec<u8>>,
        max_text_length: usize,
        limits: RecordLimits,
        decimals: (usize, usize),
        seconds: (i64, i64),
    ) -> PyResult<Self> {
        if fields != TRADE_FIELDS {
            return Err(PyValueError::new_err(format!(
                "the trade schema's fields are {fields:?}; the native encoder writes {TRADE_FIELDS:?}"
            )));
        }
        let (precision, scale) = decimals;
        if precision > 38 || scale > precision {
            return Err(PyValueError::new_err(format!(
                "decimal({precision},{scale}) is beyond 128-bit integers"
            )));
        }
        Ok(TradeEncoder {
            header,
            asset_classes: enum_table(asset_classes),
            sides: enum_table(sides),
            max_text_length,
            limits,
            integer_digits: precision - scale,
            scale,
            powers: (0..=scale as u32).map(|power| 10u128.pow(power)).collect(),
            seconds,
        })
    }

    /// The trades of a serialized PublishTradesRequest as Kafka messages: keys[i] and values[i] for trade i,
    /// None for each trade of `unjudged` (left to the plain path); `symbols`: trades per symbol, all of them.
    /// A trade without a message_id gets id_prefix followed by (id_node + i) mod 2^48 as 12 hex digits.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        request: &[u8],
        ingestion_timestamp: i64,
        id_prefix: &str,
        id_node: u64,
    ) -> PyResult<Encoded<'py>> {
        if id_prefix.len() != BATCH_ID_PREFIX_SIZE {
            return Err(PyValueError::new_err(
                "id_prefix: a UUID's first 24 characters",
            ));
        }
        let malformed = |reason| {
            PyValueError::new_err(format!("not a serialized PublishTradesRequest: {reason}"))
        };
        let (mut keys, mut values, mut unjudged) = (Vec::new(), Vec::new(), Vec::new());
        let mut symbols = Symbols {
            positions: HashMap::new(),
            seen: Vec::new(),
        };
        let mut trade = Trade::default();
        let mut out = Vec::with_capacity(256);
        let mut reader = Reader::new(request);
        while let Some((number, value)) = reader.field().map_err(malformed)? {
            let (2, Value::Len(data)) = (number, value) else {
                continue; // batch_id and unknown fields
            };
            let index = values.len();
            trade.read(data).map_err(malformed)?;
            let key = symbols.count(py, trade.symbol).clone();
            out.clear();
            out.extend_from_slice(&self.header);
            out.push((MESSAGE_ID_SIZE << 1) as u8);
            if trade.message_id.is_empty() {
                out.extend_from_slice(id_prefix.as_bytes());
                let node = id_node.wrapping_add(index as u64) & NODE_MASK;
                out.extend(
                    (0..12)
                        .rev()
                        .map(|digit| HEX_DIGITS[(node >> (4 * digit)) as usize & 0xF]),
                );
            } else if is_canonical_uuid(trade.message_id) {
                out.extend_from_slice(trade.message_id);
            } else {
                out.clear();
            }
            if !out.is_empty() && self.write_body(&mut out, &mut trade, ingestion_timestamp) {
                keys.push(Some(key));
                values.push(Some(PyBytes::new(py, &out)));
            } else {
                keys.push(None);
                values.push(None);
                unjudged.push(index);
            }
        }
        let counts = PyDict::new(py);
        for (symbol, _, count) in &symbols.seen {
            // UTF-8 was checked on reading
            counts.set_item(
                PyString::new(py, std::str::from_utf8(symbol).unwrap_or_default()),
                count,
            )?;
        }
        Ok((keys, values, unjudged, counts))
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<TradeEncoder>()
}
