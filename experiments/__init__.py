"""One script per experiment of the paper (see README.md); run them as files: python experiments/addmul.py."""
