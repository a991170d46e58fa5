"""Reading inputs: DICOM series, NIfTI volumes, reports; atomic writes."""
