"""aura_common"""
