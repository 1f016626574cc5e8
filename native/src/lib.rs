//! K2's compiled hot paths, each called once per batch so that no per-record Python work remains on them:
//! - `publish`: published protobuf trades → their Avro v2 Kafka messages (ingest's PublishTrades);
//! - `binance`: plain Binance trade frames → their Avro v2 Kafka messages (ingest's feed);
//! - `fanout`: Avro v2 Kafka messages → framed protobuf messages (query's live fan-out);
//! - `arrow_decode`: Avro v2 Kafka messages → Arrow columns' buffers (the writer's decode path).
//!
//! Each writes exactly the bytes of the Python plain path it replaces (tests compare them), and hands
//! anything unusual back to that path, which judges it.
use pyo3::prelude::*;

mod arrow_decode;
mod avro_write;
mod binance;
mod fanout;
mod fanout_transcode;
mod limits;
mod proto_wire;
mod publish;
mod text;

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    publish::register(module)?;
    binance::register(module)?;
    fanout::register(module)?;
    arrow_decode::register(module)?;
    Ok(())
}
