//! Binance `<symbol>@trade` and `<symbol>@bookTicker` frames → their Avro v2 Kafka messages, one frame per call
//! (the feed's per-frame hot path, k2/services/ingest/binance/parsing.py). Only a frame that is plainly valid is
//! written here: the combined-stream wrapper and the event's known keys (nine for a trade, six for a bookTicker),
//! each once, strings without escapes, integers within 64 bits, plain positive decimal strings, a trade time within
//! years 1 to 9999. For any other frame an encoder answers None and the Python parser reads it, as it reads every
//! frame it is given (and says what is wrong with it). What the record looks like (the schema's pieces, the
//! symbols' routes) comes from Python.
use std::collections::HashMap;
use std::io::Write;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::avro_write::{plain_decimal, write_bytes, write_long, write_positive_decimal};
use uuid::Uuid;

/// A reader of the JSON a plain frame is made of; None for anything else.
struct Json<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> Json<'a> {
    /// The next byte after whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        while let Some(&byte) = self.data.get(self.position) {
            self.position += 1;
            if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(byte);
            }
        }
        None
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// A string without escapes or control characters, valid UTF-8; the opening quote already read.
    fn string_rest(&mut self) -> Option<&'a [u8]> {
        let start = self.position;
        let size = self.data[start..]
            .iter()
            .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)?;
        if self.data[start + size] != b'"' {
            return None;
        }
        self.position = start + size + 1;
        let text = &self.data[start..start + size];
        std::str::from_utf8(text).ok().map(|_| text)
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        self.string_rest()
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match self.next()? {
            b'"' => self.string_rest().map(Value::String),
            b't' => self.word(b"rue").map(|_| Value::Boolean(true)),
            b'f' => self.word(b"alse").map(|_| Value::Boolean(false)),
            byte @ (b'-' | b'0'..=b'9') => self.integer(byte).map(Value::Integer),
            _ => None,
        }
    }

    fn word(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.position + rest.len();
        (self.data.get(self.position..end)? == rest).then(|| self.position = end)
    }

    /// An integer (no fraction, no exponent, no "-0") within 64 bits; its first byte already read.
    fn integer(&mut self, first: u8) -> Option<i64> {
        let negative = first == b'-';
        let start = self.position - usize::from(!negative);
        let digits = self.data[start..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        let end = start + digits;
        if digits == 0 || (self.data[start] == b'0' && (digits > 1 || negative)) {
            return None;
        }
        if matches!(self.data.get(end), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.position = end;
        let mut value: i64 = 0;
        for &digit in &self.data[start..end] {
            let digit = i64::from(digit - b'0');
            value = value
                .checked_mul(10)?
                .checked_add(if negative { -digit } else { digit })?;
        }
        Some(value)
    }
}

#[derive(Clone, Copy)]
enum Value<'a> {
    String(&'a [u8]),
    Integer(i64),
    Boolean(bool),
}

impl<'a> Value<'a> {
    fn string(self) -> Option<&'a [u8]> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    fn integer(self) -> Option<i64> {
        match self {
            Value::Integer(number) => Some(number),
            _ => None,
        }
    }

    fn boolean(self) -> Option<bool> {
        match self {
            Value::Boolean(flag) => Some(flag),
            _ => None,
        }
    }
}

/// The trade event's nine keys, each read once.
#[derive(Default)]
struct TradeEvent<'a> {
    event_type: Option<&'a [u8]>,
    event_time: Option<i64>,
    symbol: Option<&'a [u8]>,
    trade_id: Option<i64>,
    price: Option<&'a [u8]>,
    quantity: Option<&'a [u8]>,
    trade_time: Option<i64>,
    buyer_is_maker: Option<bool>,
    best_match: Option<bool>,
}

fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

impl<'a> TradeEvent<'a> {
    /// The event object; its opening brace already read.
    fn read(json: &mut Json<'a>) -> Option<Self> {
        read_object(json, |event: &mut Self, key, value| match key {
            b"e" => once(&mut event.event_type, value.string()),
            b"E" => once(&mut event.event_time, value.integer()),
            b"s" => once(&mut event.symbol, value.string()),
            b"t" => once(&mut event.trade_id, value.integer()),
            b"p" => once(&mut event.price, value.string()),
            b"q" => once(&mut event.quantity, value.string()),
            b"T" => once(&mut event.trade_time, value.integer()),
            b"m" => once(&mut event.buyer_is_maker, value.boolean()),
            b"M" => once(&mut event.best_match, value.boolean()),
            _ => None,
        })
    }
}

/// A JSON object's members read into a new `T` by `member` (None for a key it does not take), its opening brace
/// already read; None at anything else than a next member or the closing brace.
fn read_object<'a, T: Default>(
    json: &mut Json<'a>,
    member: impl Fn(&mut T, &'a [u8], Value<'a>) -> Option<()>,
) -> Option<T> {
    let mut object = T::default();
    loop {
        let key = json.string()?;
        json.expect(b':')?;
        let value = json.value()?;
        member(&mut object, key, value)?;
        match json.next()? {
            b',' => continue,
            b'}' => return Some(object),
            _ => return None,
        }
    }
}

/// A bookTicker event's six keys, each read once.
#[derive(Default)]
struct BookTickerEvent<'a> {
    update_id: Option<i64>,
    symbol: Option<&'a [u8]>,
    bid_price: Option<&'a [u8]>,
    bid_quantity: Option<&'a [u8]>,
    ask_price: Option<&'a [u8]>,
    ask_quantity: Option<&'a [u8]>,
}

impl<'a> BookTickerEvent<'a> {
    /// The event object; its opening brace already read.
    fn read(json: &mut Json<'a>) -> Option<Self> {
        read_object(json, |event: &mut Self, key, value| match key {
            b"u" => once(&mut event.update_id, value.integer()),
            b"s" => once(&mut event.symbol, value.string()),
            b"b" => once(&mut event.bid_price, value.string()),
            b"B" => once(&mut event.bid_quantity, value.string()),
            b"a" => once(&mut event.ask_price, value.string()),
            b"A" => once(&mut event.ask_quantity, value.string()),
            _ => None,
        })
    }
}

/// A combined-stream frame `{"stream": ..., "data": {...}}` (keys in either order, each once, nothing after it):
/// its stream name and its event as `read` reads it.
fn combined<'a, T>(
    raw: &'a [u8],
    read: impl Fn(&mut Json<'a>) -> Option<T>,
) -> Option<(&'a [u8], T)> {
    let mut json = Json {
        data: raw,
        position: 0,
    };
    let (mut stream, mut event) = (None, None);
    json.expect(b'{')?;
    loop {
        match json.string()? {
            b"stream" if stream.is_none() => {
                json.expect(b':')?;
                stream = Some(json.string()?);
            }
            b"data" if event.is_none() => {
                json.expect(b':')?;
                json.expect(b'{')?;
                event = Some(read(&mut json)?);
            }
            _ => return None,
        }
        match json.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    if json.next().is_some() {
        return None;
    }
    Some((stream?, event?))
}

/// A trade stream's symbol and what every trade of it shares, as written.
struct Route {
    symbol: Vec<u8>,
    key: Py<PyBytes>,
    head: Vec<u8>, // symbol, exchange, asset class
    buy: Vec<u8>,  // currency, side, trade conditions
    sell: Vec<u8>,
}

/// Writes plain Binance trade frames as Avro v2 trade messages. Built by the feed's FrameParser.
#[pyclass(frozen, module = "k2._native")]
struct TradeFrameEncoder {
    routes: HashMap<Vec<u8>, usize>,
    symbols: Vec<Route>,
    header: Vec<u8>, // the single-object header and the message id's size
    namespace: Uuid,
    trade_id_prefix: Vec<u8>,
    taker_sold: Vec<u8>, // platform_sequence, then vendor_data up to the event time's value
    taker_bought: Vec<u8>,
    time_scale: i64,
    micros: (i64, i64), // trade times accepted here, [first, end) in microseconds since 1970
    integer_digits: usize,
    scale: usize,
    powers: Vec<u128>,
}

type Encoded<'py> = (usize, i64, i64, Py<PyBytes>, Bound<'py, PyBytes>);
/// A trade stream as Python describes it: (stream name, symbol, head, buy, sell).
type RouteSpec = (String, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

/// (integer digits, scale, powers of ten up to the scale) of decimal(precision, scale), as both encoders read
/// plain decimals; refused beyond 128-bit integers.
fn decimal_layout((precision, scale): (usize, usize)) -> PyResult<(usize, usize, Vec<u128>)> {
    if precision > 38 || scale > precision {
        return Err(PyValueError::new_err(format!(
            "decimal({precision},{scale}) is beyond 128-bit integers"
        )));
    }
    let powers = (0..=scale as u32).map(|power| 10u128.pow(power)).collect();
    Ok((precision - scale, scale, powers))
}

/// Each stream's name → its position, and the routes `route` makes of the specs, in that order.
fn stream_routes<S, R>(
    specs: Vec<S>,
    mut route: impl FnMut(S) -> (String, R),
) -> (HashMap<Vec<u8>, usize>, Vec<R>) {
    let mut streams = HashMap::new();
    let mut routes = Vec::new();
    for (position, spec) in specs.into_iter().enumerate() {
        let (stream, made) = route(spec);
        streams.insert(stream.into_bytes(), position);
        routes.push(made);
    }
    (streams, routes)
}

fn namespace_uuid(bytes: &[u8]) -> PyResult<Uuid> {
    Uuid::from_slice(bytes).map_err(|error| PyValueError::new_err(format!("namespace: {error}")))
}

#[pymethods]
impl TradeFrameEncoder {
    /// routes: one per trade stream; the others as documented on the struct;
    /// time_scale: microseconds per unit of the frames' times; decimals: (precision, scale).
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        routes: Vec<RouteSpec>,
        header: Vec<u8>,
        namespace: Vec<u8>,
        trade_id_prefix: Vec<u8>,
        taker_sold: Vec<u8>,
        taker_bought: Vec<u8>,
        time_scale: i64,
        micros: (i64, i64),
        decimals: (usize, usize),
    ) -> PyResult<Self> {
        let (integer_digits, scale, powers) = decimal_layout(decimals)?;
        let (streams, symbols) = stream_routes(routes, |(stream, symbol, head, buy, sell)| {
            let key = PyBytes::new(py, &symbol).unbind();
            let route = Route {
                symbol,
                key,
                head,
                buy,
                sell,
            };
            (stream, route)
        });
        let namespace = namespace_uuid(&namespace)?;
        Ok(TradeFrameEncoder {
            routes: streams,
            symbols,
            header,
            namespace,
            trade_id_prefix,
            taker_sold,
            taker_bought,
            time_scale,
            micros,
            integer_digits,
            scale,
            powers,
        })
    }

    /// A plain trade frame as (route position, trade id, trade time in microseconds, key, Avro message), with
    /// `received` (microseconds since 1970) as its ingestion time; None for any other frame.
    fn encode<'py>(&self, py: Python<'py>, raw: &[u8], received: i64) -> Option<Encoded<'py>> {
        let (stream, event) = combined(raw, TradeEvent::read)?;
        let position = *self.routes.get(stream)?;
        let route = &self.symbols[position];
        event.event_type?;
        event.best_match?;
        let decimal = |text| plain_decimal(text, self.integer_digits, self.scale, &self.powers);
        let (price, quantity) = (decimal(event.price?)?, decimal(event.quantity?)?);
        let (trade_id, buyer_is_maker) = (event.trade_id?, event.buyer_is_maker?);
        let micros = event.trade_time?.checked_mul(self.time_scale)?;
        let event_time = event.event_time?.checked_mul(self.time_scale)?;
        if event.symbol? != route.symbol.as_slice()
            || !(self.micros.0..self.micros.1).contains(&micros)
        {
            return None;
        }
        // Binance trade ids are per symbol: the symbol is part of the trade id (and so of the message id).
        let mut trade_id_text = self.trade_id_prefix.clone();
        trade_id_text.extend_from_slice(&route.symbol);
        write!(trade_id_text, "-{trade_id}").ok()?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.header);
        write_uuid5(&mut out, &self.namespace, &trade_id_text);
        write_bytes(&mut out, &trade_id_text);
        out.extend_from_slice(&route.head);
        write_long(&mut out, micros);
        write_positive_decimal(&mut out, price);
        write_positive_decimal(&mut out, quantity);
        out.extend_from_slice(if buyer_is_maker {
            &route.sell
        } else {
            &route.buy
        });
        out.push(2);
        write_long(&mut out, trade_id);
        write_long(&mut out, received);
        out.extend_from_slice(if buyer_is_maker {
            &self.taker_sold
        } else {
            &self.taker_bought
        });
        write_bytes(&mut out, event_time.to_string().as_bytes());
        out.push(0);
        Some((
            position,
            trade_id,
            micros,
            route.key.clone_ref(py),
            PyBytes::new(py, &out),
        ))
    }
}

/// A bookTicker stream's symbol and what every quote of it shares, as written.
struct QuoteRoute {
    symbol: Vec<u8>,
    key: Py<PyBytes>,
    quote_id_prefix: Vec<u8>, // BINANCE-<symbol>-
    head: Vec<u8>,            // symbol, exchange, asset class
    currency: Vec<u8>,
}

/// Writes plain Binance bookTicker frames (both sides of the book present) as Avro v2 quote messages, stamped
/// with the receive time (the event has none). Built by the feed's FrameParser.
#[pyclass(frozen, module = "k2._native")]
struct QuoteFrameEncoder {
    routes: HashMap<Vec<u8>, usize>,
    symbols: Vec<QuoteRoute>,
    header: Vec<u8>, // the single-object header and the message id's size
    namespace: Uuid,
    tail: Vec<u8>, // platform_sequence and vendor_data
    integer_digits: usize,
    scale: usize,
    powers: Vec<u128>,
}

type EncodedQuote<'py> = (usize, i64, Py<PyBytes>, Bound<'py, PyBytes>);
/// A bookTicker stream as Python describes it: (stream name, symbol, quote id prefix, head, currency).
type QuoteRouteSpec = (String, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

#[pymethods]
impl QuoteFrameEncoder {
    /// routes: one per bookTicker stream; the others as documented on the struct; decimals: (precision, scale).
    #[new]
    fn new(
        py: Python<'_>,
        routes: Vec<QuoteRouteSpec>,
        header: Vec<u8>,
        namespace: Vec<u8>,
        tail: Vec<u8>,
        decimals: (usize, usize),
    ) -> PyResult<Self> {
        let (integer_digits, scale, powers) = decimal_layout(decimals)?;
        let (streams, symbols) = stream_routes(
            routes,
            |(stream, symbol, quote_id_prefix, head, currency)| {
                let key = PyBytes::new(py, &symbol).unbind();
                let route = QuoteRoute {
                    symbol,
                    key,
                    quote_id_prefix,
                    head,
                    currency,
                };
                (stream, route)
            },
        );
        let namespace = namespace_uuid(&namespace)?;
        Ok(QuoteFrameEncoder {
            routes: streams,
            symbols,
            header,
            namespace,
            tail,
            integer_digits,
            scale,
            powers,
        })
    }

    /// A plain bookTicker frame as (route position, book update id, key, Avro message), with `received`
    /// (microseconds since 1970) as its timestamp and ingestion time; None for any other frame (an empty side of
    /// the book included: the plain path writes it).
    fn encode<'py>(&self, py: Python<'py>, raw: &[u8], received: i64) -> Option<EncodedQuote<'py>> {
        let (stream, event) = combined(raw, BookTickerEvent::read)?;
        let position = *self.routes.get(stream)?;
        let route = &self.symbols[position];
        let update_id = event.update_id?;
        if event.symbol? != route.symbol.as_slice() {
            return None;
        }
        let decimal = |text| plain_decimal(text, self.integer_digits, self.scale, &self.powers);
        let sides = [
            decimal(event.bid_price?)?,
            decimal(event.bid_quantity?)?,
            decimal(event.ask_price?)?,
            decimal(event.ask_quantity?)?,
        ];
        let mut quote_id = route.quote_id_prefix.clone();
        write!(quote_id, "{update_id}").ok()?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.header);
        write_uuid5(&mut out, &self.namespace, &quote_id);
        write_bytes(&mut out, &quote_id);
        out.extend_from_slice(&route.head);
        write_long(&mut out, received);
        for unscaled in sides {
            out.push(2); // the union's decimal branch
            write_positive_decimal(&mut out, unscaled);
        }
        write_bytes(&mut out, &route.currency);
        out.push(2);
        write_long(&mut out, update_id);
        write_long(&mut out, received);
        out.extend_from_slice(&self.tail);
        Some((
            position,
            update_id,
            route.key.clone_ref(py),
            PyBytes::new(py, &out),
        ))
    }
}

/// The name-based (version 5) UUID of `name` in `namespace`, as its 36-character string.
fn write_uuid5(out: &mut Vec<u8>, namespace: &Uuid, name: &[u8]) {
    let mut text = Uuid::encode_buffer();
    out.extend_from_slice(
        Uuid::new_v5(namespace, name)
            .hyphenated()
            .encode_lower(&mut text)
            .as_bytes(),
    );
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<TradeFrameEncoder>()?;
    module.add_class::<QuoteFrameEncoder>()
}
