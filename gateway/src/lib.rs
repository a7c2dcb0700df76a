//! thaw-gateway: the edge of thaw (config, routing, admission, autoscaling,
//! supervision). Built in its own issue; the worker comes first.
