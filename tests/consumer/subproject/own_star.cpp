// The parent project's own program called `star`, unrelated to the library.
int main() { return 0; }
