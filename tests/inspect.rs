// SPDX-License-Identifier: MPL-2.0
//! What gst-inspect-1.0 shows users: every property documented, its declared default the value
//! a new element really has, and the enum types listed as plugin API.

mod common;

use gst::glib;
use gst::prelude::*;

#[test]
fn properties_are_documented_and_defaults_are_true() {
    common::init();
    for factory in ["vmemexport", "dmabufsink"] {
        let element = gst::ElementFactory::make(factory).build().unwrap();
        let mut own = 0;
        for pspec in element.list_properties() {
            if pspec.owner_type() != element.type_() {
                continue; // GstObject's and the base classes' own
            }
            own += 1;
            let name = pspec.name();
            assert!(
                pspec.blurb().is_some_and(|b| b.len() > 20),
                "{factory}.{name} has no real blurb"
            );
            if pspec.flags().contains(glib::ParamFlags::WRITABLE) {
                let default = pspec.default_value();
                let actual = element.property_value(name);
                assert_eq!(
                    actual.serialize().ok(),
                    default.serialize().ok(),
                    "{factory}.{name}: declared default differs from the initial value"
                );
            }
        }
        assert!(own >= 6, "{factory}: only {own} properties of its own");
    }
}

#[test]
fn enum_types_are_plugin_api() {
    common::init();
    for ty in [
        gstvmem::vmemexport::Backing::static_type(),
        gstvmem::dmabufsink::DropPolicy::static_type(),
    ] {
        assert!(
            ty.plugin_api_flags().is_some(),
            "{} is not marked as plugin API",
            ty.name()
        );
    }
}
