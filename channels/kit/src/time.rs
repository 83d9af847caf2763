//! The one conversion from the adapters' clock (`chrono`) to `channel.v1` timestamps.
use chrono::{DateTime, Utc};

/// `at` as a protobuf timestamp (whole seconds plus nanoseconds).
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_nanos_are_kept() {
        let at = DateTime::from_timestamp(1_704_081_605, 123_456_789).unwrap();
        assert_eq!(
            timestamp(at),
            prost_types::Timestamp {
                seconds: 1_704_081_605,
                nanos: 123_456_789
            }
        );
    }
}
