"""radbridge core, in layers that import only downwards: model/ (what every layer may
import), store/ (and the spool), engine/ (the job engine), runtime/ (the running
service), cli/ (the command line).

The version is ``broker.model.version.VERSION`` (from the package's metadata)."""
