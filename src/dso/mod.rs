//! DSO file formats, one module per format.
