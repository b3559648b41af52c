"""`python -m transformers_valor.conversion ...`: convert an original VALOR checkpoint (see `convert.main`)."""

from .convert import main

if __name__ == "__main__":
    main()
