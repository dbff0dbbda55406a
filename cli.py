"""posecrop-reid command line, `python cli.py --help` in a checkout (the app: pipelines/app.py)."""
from pipelines.app import app, main  # noqa: F401  (tests drive `cli.app`)

if __name__ == "__main__":
    main()
