//! The PyTorch reference numbers in `tests/fixtures/*.json`, one file per
//! family, written by `tools/gen_lstm_fixtures.py` (lstm) and
//! `tools/gen_rnn_fixtures.py` (gru, rnn, cells, padded); see
//! `tests/fixtures/README.md`. Shared by the `lstm_torch` and `recurrent`
//! test targets.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::OnceLock;

use serde::Deserialize;

/// Every module of every family has this input and hidden size.
pub const INPUT_SIZE: usize = 3;
pub const HIDDEN_SIZE: usize = 4;

/// A tensor as a shape and its row-major values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// One PyTorch module with its parameters and the calls recorded with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    pub name: String,
    /// The PyTorch constructor call, e.g. `nn.GRU(3, 4, num_layers=2)`.
    pub torch: String,
    /// `torch.manual_seed` before building the module and drawing the runs.
    pub seed: u64,
    pub num_layers: usize,
    pub bias: bool,
    pub batch_first: bool,
    pub bidirectional: bool,
    pub proj_size: usize,
    /// `nonlinearity="relu"` (RNN and RNNCell only).
    pub relu: bool,
    /// `state_dict()` entries, PyTorch names.
    pub params: BTreeMap<String, Data>,
    pub runs: Vec<Run>,
}

/// One call of a module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// True sequence lengths of a padded batch; empty for a plain forward.
    pub lengths: Vec<usize>,
    pub input: Data,
    /// Initial state: `[h0]`, `[h0, c0]` for LSTMs, or empty for none.
    pub state: Vec<Data>,
    /// What the module returned, flattened: `[output, h_n]` or
    /// `[output, h_n, c_n]` for stacked modules, `[h]` or `[h, c]` for cells.
    pub outputs: Vec<Data>,
}

/// The modules of one fixture file, in file order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    /// Which script wrote the file and how to regenerate it.
    pub generated_by: String,
    pub torch_version: String,
    pub input_size: usize,
    pub hidden_size: usize,
    pub modules: Vec<Module>,
}

impl Family {
    fn parse(file: &str, json: &str) -> Self {
        let family: Self = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("tests/fixtures/{file}.json: {e}"));
        assert_eq!(
            (family.input_size, family.hidden_size),
            (INPUT_SIZE, HIDDEN_SIZE),
            "tests/fixtures/{file}.json: sizes"
        );
        for m in &family.modules {
            let runs = m.runs.iter();
            let runs = runs.flat_map(|r| [&r.input].into_iter().chain(&r.state).chain(&r.outputs));
            for d in m.params.values().chain(runs) {
                let what = format!("tests/fixtures/{file}.json, {}: {:?}", m.name, d.shape);
                assert_eq!(d.values.len(), d.shape.iter().product::<usize>(), "{what}");
            }
        }
        family
    }

    /// The module called `name`; panics when there is none.
    pub fn get(&self, name: &str) -> &Module {
        self.modules
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no fixture module {name:?}"))
    }
}

impl Deref for Family {
    type Target = [Module];

    fn deref(&self) -> &[Module] {
        &self.modules
    }
}

/// `pub fn family() -> &'static Family`, parsed once from `tests/fixtures/family.json`.
macro_rules! families {
    ($($family:ident,)*) => {$(
        pub fn $family() -> &'static Family {
            static FAMILY: OnceLock<Family> = OnceLock::new();
            FAMILY.get_or_init(|| {
                let json = include_str!(concat!("../fixtures/", stringify!($family), ".json"));
                Family::parse(stringify!($family), json)
            })
        }
    )*};
}

families! {
    lstm,
    gru,
    rnn,
    cells,
    padded,
}
