//! The bounds k2.core.records sets on a record beyond its texts' lengths, as Python passes them
//! (records.NATIVE_LIMITS): what a symbol or an exchange may be, and how many trade conditions and vendor_data
//! entries, of what lengths, a record may have. A record outside them is handed back to the plain path, which
//! refuses it with the field and the reason.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::text;

pub struct RecordLimits {
    name_bytes: [bool; 256],
    max_name: usize,
    max_conditions: usize,
    max_condition: usize,
    max_entries: usize,
    max_key: usize,
    max_value: usize,
}

impl FromPyObject<'_, '_> for RecordLimits {
    type Error = PyErr;

    /// (name characters, longest name, most trade conditions, longest condition, most vendor_data entries,
    /// longest key, longest value); lengths in characters.
    fn extract(limits: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
        let (characters, max_name, max_conditions, max_condition, max_entries, max_key, max_value): (
            String,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
        ) = limits.extract()?;
        if !characters.is_ascii() {
            return Err(PyValueError::new_err("name characters: ASCII only"));
        }
        let mut name_bytes = [false; 256];
        for byte in characters.bytes() {
            name_bytes[byte as usize] = true;
        }
        Ok(RecordLimits {
            name_bytes,
            max_name,
            max_conditions,
            max_condition,
            max_entries,
            max_key,
            max_value,
        })
    }
}

impl RecordLimits {
    /// A symbol or an exchange: 1 to `max_name` of the name characters (ASCII, so bytes are characters).
    pub fn is_name(&self, text: &[u8]) -> bool {
        !text.is_empty()
            && text.len() <= self.max_name
            && text.iter().all(|&b| self.name_bytes[b as usize])
    }

    pub fn conditions_fit<'t>(
        &self,
        count: usize,
        mut conditions: impl Iterator<Item = &'t [u8]>,
    ) -> bool {
        count <= self.max_conditions
            && conditions.all(|condition| text::length_at_most(condition, self.max_condition))
    }

    /// `count` entries as they come (a key may repeat; the plain path judges the map it makes of them).
    pub fn vendor_data_fits<'t>(
        &self,
        count: usize,
        mut entries: impl Iterator<Item = (&'t [u8], &'t [u8])>,
    ) -> bool {
        count <= self.max_entries
            && entries.all(|(key, value)| {
                text::length_at_most(key, self.max_key)
                    && text::length_at_most(value, self.max_value)
            })
    }
}
