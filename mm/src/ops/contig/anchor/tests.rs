//! Tests of the anchor choice.
