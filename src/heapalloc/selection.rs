// SPDX-License-Identifier: MPL-2.0
//! The `heap` property's syntax (dmaheap allocator and vmemexport): which dma-heaps to try, in
//! order.

use crate::kernel::{CMA_HEAP_NAMES, Heap, available_heaps};

/// Which heap to allocate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeapSelection {
    /// A physically contiguous CMA heap if there is one, else `system`.
    Auto,
    /// The first of these names that exists.
    Names(Vec<String>),
}

impl HeapSelection {
    /// Parses `auto`, a heap name, or a comma-separated list of names in order of preference.
    /// Heap names may themselves contain a comma ("linux,cma"): a pair of items that forms a
    /// known or existing heap name is read as that name. `cma` stands for any CMA heap.
    pub fn parse(spec: &str) -> HeapSelection {
        let spec = spec.trim();
        if spec.is_empty() || spec == "auto" {
            return HeapSelection::Auto;
        }
        let known: Vec<String> = CMA_HEAP_NAMES
            .iter()
            .map(|s| s.to_string())
            .chain(available_heaps())
            .collect();
        let items: Vec<&str> = spec.split(',').map(str::trim).collect();
        let mut names = Vec::new();
        let mut i = 0;
        while i < items.len() {
            if i + 1 < items.len() {
                let joined = format!("{},{}", items[i], items[i + 1]);
                if known.contains(&joined) {
                    names.push(joined);
                    i += 2;
                    continue;
                }
            }
            if items[i] == "cma" {
                names.extend(CMA_HEAP_NAMES.iter().map(|s| s.to_string()));
            } else if !items[i].is_empty() {
                names.push(items[i].to_string());
            }
            i += 1;
        }
        HeapSelection::Names(names)
    }

    /// The heap names to try, in order.
    pub fn candidates(&self) -> Vec<String> {
        match self {
            HeapSelection::Auto => CMA_HEAP_NAMES
                .iter()
                .copied()
                .chain(["system"])
                .map(str::to_string)
                .collect(),
            HeapSelection::Names(names) => names.clone(),
        }
    }
}

/// Opens the first heap of `spec` (see [`HeapSelection::parse`]) that exists.
pub fn open_heap(spec: &str) -> crate::kernel::Result<Heap> {
    Heap::open_first(&HeapSelection::parse(spec).candidates())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_parses_names_with_commas() {
        assert_eq!(HeapSelection::parse("auto"), HeapSelection::Auto);
        assert_eq!(HeapSelection::parse(""), HeapSelection::Auto);
        assert_eq!(
            HeapSelection::parse("linux,cma,reserved,system"),
            HeapSelection::Names(vec!["linux,cma".into(), "reserved".into(), "system".into()])
        );
        assert_eq!(
            HeapSelection::parse("system"),
            HeapSelection::Names(vec!["system".into()])
        );
        assert_eq!(
            HeapSelection::parse("cma, system").candidates(),
            ["linux,cma", "reserved", "default_cma_region", "system"]
        );
    }

    #[test]
    fn auto_prefers_contiguous_memory() {
        assert_eq!(HeapSelection::Auto.candidates().last().unwrap(), "system");
        assert_eq!(HeapSelection::Auto.candidates()[0], "linux,cma");
    }
}
