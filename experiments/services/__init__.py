"""Operations of the experiments app: plain, typed, keyword-only functions."""
