"""Device keys and COSE_Sign1 signing/verification."""
