"""reidkit: the few utilities both stages share, none of which knows about poses, crops or networks.

- `reidkit.errors`: ReidError, the base of every error the project raises on purpose (the CLI turns these, and
  OSErrors of the environment, into one-line messages; anything else is a bug and keeps its traceback).
- `reidkit.atomic`: atomic file writes (temporary file in the same folder, fsync, rename).
- `reidkit.typedconfig`: dataclass configs read from TOML / dicts with typed, named errors.
- `reidkit.pause`: pause points, to freeze a run at a named event (for a look at it, or for the fault tests).
"""
