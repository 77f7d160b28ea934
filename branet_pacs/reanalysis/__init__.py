"""`branet reanalyze`: re-run the current models over an archive (DIMSE, DICOMweb or a folder) and store the results.

archive.py (the vocabulary) <- dimse.py, dicomweb.py, folder.py (the archives) <- archives.py (`open_archive`);
run.py drives a run (state.py: the SQLite state file; workers.py: the analysis processes); commands.py is the CLI.
"""
