//! Shared support code for berth's integration tests.
//!
//! Use it from a test file with `mod support;` and `use support::*;`.
//! Tests of one binary run in parallel threads, so everything here is
//! thread-safe and every resource (names, ports, temp dirs, registries,
//! engines) is unique per call.
//!
//! * [`util`]: [`unique`] ids, [`free_port`], [`wait_until`] (always wait
//!   on conditions with generous deadlines, never sleep-then-assert).
//! * [`docker`]: CLI wrappers for the system engine ([`docker`],
//!   [`docker_ok`]) or another one ([`docker_at`]), container helpers, and
//!   the busybox test images ([`base_image`], [`push_image`], [`push_variant`]).
//! * [`registry`]: a private image registry on loopback ([`Registry`],
//!   [`shared_registry`]).
//! * [`dockerd`]: a private Docker engine for fault tests ([`PrivateDockerd`]).
//! * [`agent`]: the `berth` binary under test ([`Agent`], [`berth`]).
//! * [`http`]: a small synchronous HTTP client on hyper ([`http_get`],
//!   [`http_get_json`], [`http_request`]).
//!
//! Set `BERTH_TEST_KEEP=1` to keep the temp dirs (logs, registry storage,
//! engine data) of registries, private engines and agents after the tests;
//! an agent's dir is also kept whenever its test panics.
//!
//! Requirements on the machine: Docker on the default socket, `dockerd`,
//! Debian's `busybox-static` (`/usr/bin/busybox`) and `docker-registry`,
//! root (for the private engine). Registry and HTTP traffic stays on
//! 127.0.0.1; containers only use the local docker0 bridge.

#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod auth_registry;
pub mod cbor;
pub mod docker;
pub mod dockerd;
pub mod fixture;
pub mod fleet;
pub mod http;
pub mod http_server;
pub mod imds;
pub mod lifecycle_proxy;
pub mod moto;
pub mod registry;
pub mod util;

pub use agent::{Agent, BERTH_BIN, berth, exit_code};
pub use auth_registry::{AuthRegistry, basic_auth, docker_config_with_auth, push_image_with_auth};
pub use docker::{
    BASE_IMAGE, base_image, container_ids_with_label, container_ids_with_label_at, copy_image_to,
    docker, docker_at, docker_at_ok, docker_ok, image_exists, inspect_field, inspect_field_at,
    kill_main_process, kill_main_process_at, push_image, push_variant,
    remove_containers_with_label, remove_containers_with_label_at,
};
pub use dockerd::{PrivateDockerd, private_dockerd_fully_removed};
pub use http::{HttpResponse, http_get, http_get_json, http_request};
pub use imds::{Imds, ImdsConfig};
pub use lifecycle_proxy::{Fault, LifecycleProxy, RecordedCall, Service};
pub use moto::{
    CLOUDWATCH_TARGET_PREFIX, GroupInstance, MOTO_ACCOUNT, MOTO_AMI, MOTO_AZ, MOTO_ECR_PASSWORD,
    MOTO_ECR_USER, MOTO_REGION, Moto, alarm_states_of, block_on, env_refs, sdk_config_for,
};
pub use registry::{Registry, registry_manifest_digest, shared_registry};
pub use util::{free_port, keep_artifacts, send_signal, unique, wait_until};
