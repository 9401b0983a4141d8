//! How a component turns its state into bytes and back: CBOR through serde, so floats
//! (including infinities and NaN, which JSON cannot carry) round-trip exactly, and a state
//! struct can gain optional fields without breaking older checkpoints.

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateCodecError(String);

/// Encodes a component's state.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, StateCodecError> {
    let mut bytes = Vec::new();
    ciborium::into_writer(state, &mut bytes)
        .map_err(|e| StateCodecError(format!("cannot encode the state: {e}")))?;
    Ok(bytes)
}

/// An operator's `snapshot` result for `state`.
pub fn snapshot<T: Serialize>(state: &T) -> crate::component::ComponentResult<Option<Vec<u8>>> {
    encode(state)
        .map(Some)
        .map_err(crate::component::ComponentError::other)
}

/// Decodes what `snapshot` saved, as an operator's `restore` needs it.
pub fn restore<T: DeserializeOwned>(bytes: &[u8]) -> crate::component::ComponentResult<T> {
    decode(bytes).map_err(crate::component::ComponentError::other)
}

/// Decodes a component's state; the error says what did not fit.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateCodecError> {
    ciborium::from_reader(bytes)
        .map_err(|e| StateCodecError(format!("the saved state does not fit: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct State {
        min: f64,
        max: f64,
        values: Vec<(i64, String)>,
    }

    #[test]
    fn infinities_and_exact_floats_round_trip() {
        let state = State {
            min: f64::INFINITY,
            max: 0.1 + 0.2,
            values: vec![(i64::MIN, "a".into())],
        };
        let back: State = decode(&encode(&state).unwrap()).unwrap();
        assert_eq!(back, state);
        assert!(decode::<State>(b"\x01garbage").is_err());
    }
}
